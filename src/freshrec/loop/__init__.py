"""The main job: the whole continuously-learning loop on one machine (``freshrec run`` / ``make run``)."""
