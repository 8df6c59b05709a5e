"""The push gate component."""
