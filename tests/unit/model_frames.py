"""Tiny training frames in the features contract's schema, for the model tests (no dataset needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

ACTIVITY = [
    "events_1d",
    "events_7d",
    "events_30d",
    "events_total",
    "ctr_30d",
    "ctr_total",
    "hours_since_last",
]
DESCRIPTION = {
    "features": {
        "user_gender": "categorical",
        "user_age": "numeric",
        "user_occupation": "categorical",
        "user_zip_prefix": "categorical",
        "item_genres": "multi_categorical",
        "item_year": "numeric",
    }
}
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]


def tiny_frame(
    n: int = 400, seed: int = 0, users: int = 40, items: int = 60, start: str = "2024-01-01"
) -> pd.DataFrame:
    """Events with a learnable signal: users like items whose parity matches theirs; item popularity too."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    # Learnable from features alone (gender x genre, item popularity), so tiny models fit it in a few epochs.
    likes = np.where((u % 3 == 0) == (i % 5 < 2), 1.0, -1.0)
    popularity = (i % 10) / 9.0
    logit = 2.0 * likes + 3.0 * (popularity - 0.5)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 30 * 86400, n)), unit="s")
    df = pd.DataFrame(
        {
            "event_id": [f"e{seed}-{k}" for k in range(n)],
            "event_timestamp": ts,
            "user_id": [f"u{x}" for x in u],
            "item_id": [f"i{x}" for x in i],
            "label": label,
            "user_gender": np.where(u % 3 == 0, "F", "M"),
            "user_age": (18 + u % 40).astype(np.int64),
            "user_occupation": [["student", "writer", "other"][x % 3] for x in u],
            "user_zip_prefix": [f"{(x * 7) % 1000:03d}" for x in u],
            "item_genres": [
                "|".join(sorted({GENRES[x % 5], GENRES[(x // 5) % 5]})) if x % 11 else "" for x in i
            ],
            "item_year": np.where(i % 13 == 0, 0, 1950 + i % 50).astype(np.int64),
        }
    )
    for side, ids in (("user", u), ("item", i)):
        for s in ACTIVITY:
            base = rng.poisson(3, n).astype(np.float64) if "events" in s or "hours" in s else rng.random(n)
            df[f"{side}_{s}"] = base + (ids % 5)
    df["item_ctr_total"] = popularity + rng.normal(0, 0.05, n)
    return df
