"""The alert component."""
