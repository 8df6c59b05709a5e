"""The cluster mode: its layout and the rehearsal that runs the rendered workloads on one machine."""
