"""The CTR model: feature spec, Keras builder, export, versioned repository.

Nothing heavy is imported here: TensorFlow loads on first use inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from freshrec.model.spec import FeatureSpec, frame_to_inputs


def predict(
    model: Any, df: pd.DataFrame, spec: FeatureSpec | None = None, batch_size: int = 4096
) -> np.ndarray:
    """Click probabilities (1-D float32) of a Keras model on the raw rows of ``df``."""
    from freshrec.model.export import spec_of

    spec = spec or spec_of(model)
    if len(df) == 0:
        return np.zeros(0, dtype=np.float32)
    inputs = frame_to_inputs(df, spec)
    out = model.predict(inputs, batch_size=batch_size, verbose=0)
    return np.asarray(out, dtype=np.float32).reshape(-1)


__all__ = ["FeatureSpec", "frame_to_inputs", "predict"]
