"""The drift-monitor pipeline: drift on the recent window → alert → trigger."""
