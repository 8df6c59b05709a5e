"""The modules `freshrec run` imports ahead of time while the bootstrap pipeline runs."""

from __future__ import annotations

import importlib.util

from freshrec.loop.runner import PRELOAD_MODULES


def test_every_preloaded_module_exists():
    # _preload swallows import errors (the stage that needs a module reports them), so a renamed module
    # would silently stop being preloaded: the serve stage would pay its import again.
    missing = [name for name in PRELOAD_MODULES if importlib.util.find_spec(name) is None]
    assert not missing, missing
