"""Infra check before push (as TFX's InfraValidator does): serve the export in a fresh process.

The SavedModel is loaded by a new Python interpreter that knows nothing of the training process (no Keras
objects, no custom layers registered), sample rows go through ``serving_default`` exactly as a serving
client sends them (typed by the signature alone), and the probabilities are compared with the in-training
predictions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class InfraCheckResult:
    """Outcome of one infra check."""

    ok: bool
    message: str
    rows: int
    max_abs_diff: float
    tolerance: float
    seconds: float
    signature_inputs: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def infra_check(
    saved_model_dir: Path | str,
    sample_df: pd.DataFrame,
    expected: np.ndarray | Callable[[], np.ndarray] | None = None,
    tolerance: float = 1e-4,
    timeout_s: float = 180.0,
) -> InfraCheckResult:
    """Load ``saved_model_dir`` in a fresh process, predict ``sample_df``, compare with ``expected``.

    Args:
        saved_model_dir: the export (or repository version) to check.
        sample_df: raw feature rows (columns named as the signature's inputs; extra columns are ignored).
        expected: the in-training probabilities for the same rows, or a function computing them: it is
            called while the serving process starts, so the two model loads (each with its own TensorFlow
            import) overlap. Without them only loading and the output's shape and range are checked.
        tolerance: largest allowed absolute difference.
        timeout_s: the serving process is killed after this long.
    """
    start = time.perf_counter()
    saved_model_dir = Path(saved_model_dir)
    n = len(sample_df)

    def fail(message: str, diff: float = float("nan"), sig: dict[str, str] | None = None) -> InfraCheckResult:
        return InfraCheckResult(False, message, n, diff, tolerance, time.perf_counter() - start, sig or {})

    if not (saved_model_dir / "saved_model.pb").is_file():
        return fail(f"{saved_model_dir} holds no saved_model.pb")
    if n == 0:
        return fail("no sample rows to send")
    with tempfile.TemporaryDirectory(prefix="freshrec-infra-") as tmp:
        rows = Path(tmp) / "rows.parquet"
        out = Path(tmp) / "out.json"
        sample_df.reset_index(drop=True).to_parquet(rows)
        cmd = [sys.executable, "-m", "freshrec.model.infra", str(saved_model_dir), str(rows), str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if callable(expected):
                expected = expected()
            stdout, stderr = proc.communicate(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return fail(f"serving process did not answer within {timeout_s:.0f} s")
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        if proc.returncode != 0:
            tail = (stderr or stdout).strip().splitlines()[-5:]
            return fail(f"serving process failed (exit {proc.returncode}): {' | '.join(tail)}")
        result = json.loads(out.read_text())
    return check_predictions(
        np.asarray(result["probability"], dtype=np.float64),
        expected,
        tolerance,
        signature_inputs=result["inputs"],
        seconds=time.perf_counter() - start,
    )


def check_predictions(
    got: np.ndarray,
    expected: np.ndarray | None,
    tolerance: float = 1e-4,
    signature_inputs: dict[str, str] | None = None,
    seconds: float = 0.0,
) -> InfraCheckResult:
    """Judge served probabilities: right count, in [0, 1], within ``tolerance`` of ``expected`` (if given)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    n = len(got) if expected is None else len(np.asarray(expected).reshape(-1))
    sig = signature_inputs or {}

    def result(ok: bool, message: str, diff: float = float("nan")) -> InfraCheckResult:
        return InfraCheckResult(ok, message, n, diff, tolerance, seconds, sig)

    if not np.all(np.isfinite(got) & (got >= 0) & (got <= 1)):
        return result(False, "serving returned values that are not probabilities")
    if expected is None:
        return result(True, f"{len(got)} rows served (no reference predictions to compare)")
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    if expected.shape != got.shape:
        return result(False, f"serving returned {len(got)} probabilities for {len(expected)} rows")
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if diff > tolerance:
        worst = int(np.argmax(np.abs(got - expected)))
        return result(
            False,
            f"served predictions differ from training by {diff:.2e} > {tolerance:.0e} "
            f"(row {worst}: served {got[worst]:.6f}, training {expected[worst]:.6f})",
            diff,
        )
    return result(True, f"{len(got)} rows served, max diff {diff:.2e}", diff)


def _serve_rows(saved_model_dir: str, rows_path: str, out_path: str) -> None:
    """The fresh process: type the rows by the signature alone and call ``serving_default``."""
    import tensorflow as tf

    fn = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    _, specs = fn.structured_input_signature
    df = pd.read_parquet(rows_path)
    missing = [name for name in specs if name not in df.columns]
    if missing:
        raise SystemExit(f"sample rows lack signature inputs {missing}")
    feed = {}
    for name, spec in specs.items():
        col = df[name]
        if spec.dtype == tf.string:
            feed[name] = tf.constant(col.fillna("").astype(str).to_numpy(dtype=object), dtype=tf.string)
        else:
            feed[name] = tf.constant(pd.to_numeric(col).fillna(0).to_numpy(), dtype=spec.dtype)
    outputs = fn(**feed)
    prob = next(iter(outputs.values())) if "probability" not in outputs else outputs["probability"]
    Path(out_path).write_text(
        json.dumps(
            {
                "probability": prob.numpy().reshape(-1).astype(float).tolist(),
                "inputs": {k: v.dtype.name for k, v in specs.items()},
            }
        )
    )


if __name__ == "__main__":
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _serve_rows(*sys.argv[1:4])
