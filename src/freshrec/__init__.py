"""freshrec: click-through-rate recommenders that keep learning."""

__version__ = "0.1.0"
