"""The drift check component."""
