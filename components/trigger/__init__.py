"""The trigger component."""
