"""The training set component."""
