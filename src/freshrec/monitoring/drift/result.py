"""The drift result: a typed object, saved as JSON beside the Evidently HTML report.

Alerts, triggers, metrics and components read it by name (``result.features["user_age"].score``),
never by position.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

ColumnKind = Literal["numeric", "categorical"]
Verdict = Literal["ok", "drift", "quality_failure", "not_enough_data"]


class FeatureDrift(BaseModel):
    """Drift of one column between the windows."""

    name: str
    kind: ColumnKind
    method: str
    threshold: float
    score: float
    drifted: bool
    error_bound: float = 0.0  # |score - exact score| <= error_bound (0 when computed exactly)
    exact: bool = True
    report_score: float | None = None  # Evidently's value on the report sample, for cross-checking
    n_reference: int = 0
    n_current: int = 0


class ColumnQuality(BaseModel):
    """Data-quality figures of one column in the current window."""

    missing_share_reference: float = 0.0
    missing_share: float = 0.0
    out_of_range_share: float | None = None
    unseen_category_share: float | None = None


class QualityFailure(BaseModel):
    check: Literal[
        "row_count", "missing_column", "missing_share", "out_of_range", "unseen_categories", "skew"
    ]
    column: str | None = None
    value: float
    limit: float
    message: str


class TargetDrift(BaseModel):
    """Change of the positive rate (CTR) of the label column."""

    column: str
    reference_rate: float
    current_rate: float
    abs_change: float
    threshold: float
    drifted: bool


class SkewStat(BaseModel):
    """Train/serve skew of one feature: served value vs offline value for the same keys."""

    n_joined: int
    mismatch_share: float
    max_abs_diff: float | None = None


class DriftResult(BaseModel):
    """The outcome of one check; saved as JSON beside the Evidently HTML report."""

    verdict: Verdict
    reason: str
    created_at: datetime
    n_reference: int
    n_current: int
    columns: dict[str, ColumnKind] = Field(default_factory=dict)
    features: dict[str, FeatureDrift] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    drift_share: float = 0.0
    drift_share_threshold: float = 0.5
    dataset_drift: bool = False
    quality: dict[str, ColumnQuality] = Field(default_factory=dict)
    quality_failures: list[QualityFailure] = Field(default_factory=list)
    prediction_drift: FeatureDrift | None = None
    target_drift: TargetDrift | None = None
    skew: dict[str, SkewStat] = Field(default_factory=dict)
    report_sample_rows: dict[str, int] = Field(default_factory=dict)
    profile_key: str | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    json_path: Path | None = None
    html_path: Path | None = None

    @property
    def drifted_features(self) -> list[str]:
        return sorted(name for name, f in self.features.items() if f.drifted)

    def save(self, path: Path) -> Path:
        """Write the result as JSON atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> DriftResult:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise
        except ValueError as exc:
            raise ValueError(f"{path} is not a drift result: {exc}") from exc


def _stem(result: DriftResult) -> str:
    return "drift-" + result.created_at.strftime("%Y%m%dT%H%M%S%fZ")
