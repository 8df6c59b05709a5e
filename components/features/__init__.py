"""The features component."""
