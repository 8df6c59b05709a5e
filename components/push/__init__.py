"""The push component."""
