"""Features: point-in-time activity features, the training set, and the Feast store glue.

Submodules: :mod:`.activity` (feature definitions and computation), :mod:`.training_set` (pure pandas
training frame), :mod:`.definitions` (Feast objects), :mod:`.store` (apply/materialize/lookup/push).
Nothing heavy is imported here; Feast is imported inside :mod:`.store` and :mod:`.definitions` functions.
"""
