"""Online learning: event sources, the streaming test-then-train learner, guarded export, freshness.

Nothing heavy is imported here; TensorFlow loads inside the learner's functions.
"""
