"""The infra check component."""
