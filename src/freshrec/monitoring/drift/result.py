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
    calibrated: bool = False  # threshold from the stream's own window-to-window variation


class ColumnQuality(BaseModel):
    """Data-quality figures of one column in the current window."""

    missing_share_reference: float = 0.0
    missing_share: float = 0.0
    out_of_range_share: float | None = None
    unseen_category_share: float | None = None


QualityCheck = Literal[
    "row_count",
    "missing_column",
    "missing_share",
    "type_change",
    "constant",
    "entity_join",
    "out_of_range",
    "unseen_categories",
    "skew",
]
QUALITY_CHECKS: tuple[str, ...] = QualityCheck.__args__  # type: ignore[attr-defined]


class QualityFailure(BaseModel):
    """One broken data-quality check: what, where, how far past its limit."""

    check: QualityCheck
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


class ExpectedLogloss(BaseModel):
    """Prediction drift weighed by its effect: how far the predictions move the logloss they expect.

    For calibrated scores ``p`` the expected logloss is the mean binary entropy ``-p ln p - (1-p) ln(1-p)``;
    a shift of the score distribution matters by how much it moves that figure (in nats), not by a distance
    between distributions that may not change the model's loss at all.
    """

    reference: float
    current: float
    shift: float  # current - reference
    threshold: float
    drifted: bool
    calibrated: bool = False  # threshold from the stream's own window-to-window variation


class Calibration(BaseModel):
    """How the check's thresholds were set, when a :class:`~.calibration.DriftCalibration` was given."""

    false_alarm_rate: float
    windows: int  # null windows the thresholds were fitted on
    dataset_score: float  # mean standardised log drift score over the features (0: typical window)
    dataset_threshold: float


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
    expected_logloss: ExpectedLogloss | None = None
    calibration: Calibration | None = None
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
        return _write_json(path, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path | str) -> DriftResult:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise
        except ValueError as exc:
            raise ValueError(f"{path} is not a drift result: {exc}") from exc


def _write_json(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file, then rename)."""
    # TODO(io): the one atomic-write helper (freshrec/io.py) once it lands.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _stem(result: DriftResult) -> str:
    return "drift-" + result.created_at.strftime("%Y%m%dT%H%M%S%fZ")
