"""The rollout component."""
