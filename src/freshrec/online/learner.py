"""The streaming learner: test-then-train on micro-batches, checkpoint, then guarded export.

One step (:meth:`OnlineLearner.step`) takes a polled batch and:

1. drops replays (``event_id`` already in the checkpointed seen-set) and quarantines malformed rows;
2. adds the events to the incremental activity state and builds the model's feature rows (profiles +
   activity as of each event, from strictly earlier events), pushing the fresh activity rows to Feast;
3. scores the events with the current model *before* learning from them (prequential metrics), and with the
   serving version (for the guard, on exactly the same events);
4. trains on the events whose click window has closed (``label_delay_s`` of event time; the others wait in
   a buffer that is part of the checkpoint); steps 3-4 go slice by slice of ``train_batch`` events, so
   later events of the micro-batch are scored by a model that has learned the earlier ones;
5. checkpoints (weights, both optimizers, seen ids, buffer, positions, totals) atomically, and only then commits
   the source positions (at-least-once delivery + dedup = every event counted once);
6. every ``export_every_events`` events or ``export_every_s`` seconds, runs the guard and, if it passes,
   publishes a new version (labelled stable), else keeps the old one, alerts, and optionally resets.

Online exports are labelled ``stable`` directly when the guard passes: the guard compares the candidate with
the serving version on the same fresh events, which is the analysis a canary would make, and a canary of
minutes would defeat the point of learning online. The canary path stays for batch-retrained models.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import OnlineSettings
from freshrec.io import atomic_directory, atomic_write_text
from freshrec.online.guard import GuardPolicy, GuardResult, check_guard
from freshrec.online.prequential import PrequentialMetrics
from freshrec.online.sources import Batch, EventSource, SeenIds

log = logging.getLogger(__name__)

CHECKPOINT_POINTER = "CURRENT"
ACTIVITY_FILE = "activity.npz"


@dataclass
class Totals:
    """Counters over the learner's whole life (kept in the checkpoint)."""

    received: int = 0
    duplicates: int = 0
    quarantined: int = 0
    scored: int = 0
    learned: int = 0
    batches: int = 0
    exports: int = 0
    guard_failures: int = 0
    resets: int = 0
    newest_event_time: str | None = None
    newest_learned_time: str | None = None


@dataclass
class ExportRecord:
    """What happened at one export attempt."""

    attempted_at: float
    passed: bool
    version: int | None
    parent_version: int | None
    events_learned: int
    newest_event_time: str | None
    newest_entered_at: float | None
    guard: dict
    published_at: float | None = None


class Featurizer:
    """Feature rows for the model from raw events: profile join + incremental activity features.

    Args:
        users, items: profile tables (``user_id`` / ``item_id`` + profile columns).
        activity: a ``freshrec.features.activity.ActivityState`` (warm it with the history first).
    """

    def __init__(self, users: pd.DataFrame, items: pd.DataFrame, activity: Any | None = None) -> None:
        from freshrec.features.activity import ActivityState

        self.users = users
        self.items = items
        self.activity = activity if activity is not None else ActivityState()

    def __call__(self, events: pd.DataFrame) -> pd.DataFrame:
        """Update the activity state with ``events`` and return one feature row per event (same order)."""
        events = events.reset_index(drop=True)
        # Adding the batch first, then asking "as of each event's own time" (strictly earlier events) gives
        # the exact point-in-time value, including earlier events of the same batch.
        self.activity.update(events)
        return self.peek(events)

    def peek(self, events: pd.DataFrame) -> pd.DataFrame:
        """Feature rows from the activity state as it is, without adding ``events`` to it.

        What screening scores a batch on (a held batch must leave the activity state untouched).
        """
        from freshrec.features.activity import ITEM_ACTIVITY, USER_ACTIVITY
        from freshrec.features.training_set import build_training_frame

        events = events.reset_index(drop=True)
        frame = build_training_frame(events, self.users, self.items)
        ts = events["event_timestamp"]
        user = self.activity.user_rows(events["user_id"].astype(str), ts)
        item = self.activity.item_rows(events["item_id"].astype(str), ts)
        for name in USER_ACTIVITY:
            frame[name] = user[name].to_numpy()
        for name in ITEM_ACTIVITY:
            frame[name] = item[name].to_numpy()
        return frame

    def fresh_rows(self, events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Activity rows of the batch's users and items after the batch (to push to the online store)."""
        as_of = pd.Timestamp(events["event_timestamp"].max()) + pd.Timedelta(microseconds=1)
        users = self.activity.user_rows(pd.unique(events["user_id"].astype(str)), as_of)
        items = self.activity.item_rows(pd.unique(events["item_id"].astype(str)), as_of)
        return users, items


def predict(model: Any, frame: pd.DataFrame, spec: Any) -> np.ndarray:
    """Probabilities for a micro-batch: a direct call (``model.predict`` costs far more per small batch)."""
    from freshrec.model.spec import frame_to_inputs

    if len(frame) == 0:
        return np.zeros(0, dtype=np.float32)
    return predict_inputs(model, frame_to_inputs(frame, spec))


def predict_inputs(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities for input arrays (as from ``frame_to_inputs``), through one traced graph."""
    fn = getattr(model, "_freshrec_online_predict", None)
    if fn is None:
        import tensorflow as tf

        # One traced graph for every batch size (an eager call re-dispatches every layer each time).
        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        model._freshrec_online_predict = fn
    out = fn(inputs)
    return np.asarray(out, dtype=np.float32).reshape(-1)


def is_embedding_table(variable: Any) -> bool:
    """Whether a model variable is an embedding table (Keras ``Embedding`` or freshrec's multi-hash one)."""
    return variable.path.rsplit("/", 1)[-1] == "embeddings"


class Trainer:
    """One training step with two optimizers over disjoint variables: embedding tables and the rest.

    The embedding tables get ``settings.embedding_optimizer`` at ``settings.embedding_learning_rate`` (their
    rows are sparse: a mean loss over a micro-batch hands each row a tiny gradient, and a new id's row has
    never moved), the dense layers Adam at ``settings.learning_rate``. The loss is binary cross-entropy plus
    the model's regularization losses, as in ``model.fit``.
    """

    def __init__(self, model: Any, settings: OnlineSettings) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        variables = list(model.trainable_variables)
        self.embedding_variables = [v for v in variables if is_embedding_table(v)]
        self.dense_variables = [v for v in variables if not is_embedding_table(v)]
        self.optimizer = keras.optimizers.Adam(learning_rate=settings.learning_rate)
        lr = settings.embedding_learning_rate
        self.embedding_optimizer = {
            "adagrad": lambda: keras.optimizers.Adagrad(learning_rate=lr),
            "adam": lambda: keras.optimizers.Adam(learning_rate=lr),
            "sgd": lambda: keras.optimizers.SGD(learning_rate=lr),
        }[settings.embedding_optimizer]()
        self.optimizer.build(self.dense_variables)
        self.embedding_optimizer.build(self.embedding_variables)
        loss_fn = keras.losses.BinaryCrossentropy()
        n_emb = len(self.embedding_variables)

        def step(inputs, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(inputs, training=True))
                if model.losses:
                    loss = loss + tf.add_n(model.losses)
            grads = tape.gradient(loss, self.embedding_variables + self.dense_variables)
            if n_emb:
                self.embedding_optimizer.apply_gradients(
                    zip(grads[:n_emb], self.embedding_variables, strict=True)
                )
            if self.dense_variables:
                self.optimizer.apply_gradients(zip(grads[n_emb:], self.dense_variables, strict=True))
            return loss

        def score_then_step(inputs, y):
            scores = model(inputs, training=False)
            with tf.control_dependencies([scores]):
                step(inputs, y)
            return scores

        self._step = tf.function(step, reduce_retracing=True)
        self._score_then_step = tf.function(score_then_step, reduce_retracing=True)

    def train(self, inputs: dict[str, Any], y: np.ndarray) -> float:
        """One gradient step on a batch; returns its loss."""
        return float(self._step(inputs, np.asarray(y, dtype=np.float32).reshape(-1, 1)))

    def score_then_train(self, inputs: dict[str, Any], y: np.ndarray) -> np.ndarray:
        """Test-then-train in one graph call: the batch's probabilities *before* a gradient step on it.

        Equal to ``predict_inputs`` followed by :meth:`train`, at half the per-call dispatch cost (what
        bounds the learner's throughput at small ``train_batch``).
        """
        out = self._score_then_step(inputs, np.asarray(y, dtype=np.float32).reshape(-1, 1))
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def state(self) -> dict[str, list[np.ndarray]]:
        """Both optimizers' variables (iterations, moments, accumulators), for checkpoints."""
        return {
            "dense": [np.asarray(v) for v in self.optimizer.variables],
            "embedding": [np.asarray(v) for v in self.embedding_optimizer.variables],
        }

    def restore(self, state: dict[str, list[np.ndarray]]) -> None:
        """Assign a :meth:`state`; raises ValueError when its layout does not match these optimizers."""
        for key, opt in (("dense", self.optimizer), ("embedding", self.embedding_optimizer)):
            values = state[key]
            if len(values) != len(opt.variables) or any(
                tuple(v.shape) != tuple(np.shape(x)) for v, x in zip(opt.variables, values, strict=True)
            ):
                raise ValueError(f"checkpointed {key} optimizer state does not match the optimizer")
        for key, opt in (("dense", self.optimizer), ("embedding", self.embedding_optimizer)):
            for var, value in zip(opt.variables, state[key], strict=True):
                var.assign(value)


def _clone_weights(src: Any, dst: Any) -> None:
    dst.set_weights(src.get_weights())


@dataclass
class _GuardWindow:
    labels: list[np.ndarray] = field(default_factory=list)
    cand: list[np.ndarray] = field(default_factory=list)
    serv: list[np.ndarray] = field(default_factory=list)
    n: int = 0

    def add(self, y: np.ndarray, c: np.ndarray, s: np.ndarray) -> None:
        self.labels.append(y)
        self.cand.append(c)
        self.serv.append(s)
        self.n += len(y)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.labels:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return np.concatenate(self.labels), np.concatenate(self.cand), np.concatenate(self.serv)


class OnlineLearner:
    """Test-then-train learner over an :class:`~freshrec.online.sources.EventSource`.

    Args:
        model: the Keras model to keep training (spec attached, e.g. from ``load_keras_model``).
        serving_model: a second model with the serving version's weights (same architecture); the guard
            scores it on the same events. Its weights are replaced by the learner's at each export.
        featurizer: events → feature rows (see :class:`Featurizer`).
        settings: ``settings.online``.
        state_dir: checkpoint directory (None: no checkpoints, e.g. in benchmarks).
        repository: a ``ModelRepository`` to publish to (None: exports disabled).
        parent_version: the version the learner started from (the serving one).
        quarantine_dir: where malformed rows go (None: logged only).
        push: optional callable(user_rows, item_rows) pushing fresh activity to the online store.
        on_guard_failure: optional callable(GuardResult, ExportRecord) (e.g. raise an alert).
        on_export: optional callable(ExportRecord) after a version is published (e.g. freshness tracking).
        keep_all_predictions: keep every prequential pair (exact whole-stream AUC, for the benchmark).
        validate: validate events (False when the caller already holds validated, typed events).
        screening_metrics: the Prometheus textfile of the screening verdicts (None: none written).
        model_name: the model's name (the screening metrics' label).
    """

    def __init__(
        self,
        model: Any,
        serving_model: Any | None,
        featurizer: Callable[[pd.DataFrame], pd.DataFrame],
        settings: OnlineSettings,
        state_dir: Path | None = None,
        repository: Any | None = None,
        parent_version: int | None = None,
        quarantine_dir: Path | None = None,
        push: Callable[[pd.DataFrame, pd.DataFrame], Any] | None = None,
        on_guard_failure: Callable[[GuardResult, ExportRecord], Any] | None = None,
        on_export: Callable[[ExportRecord], Any] | None = None,
        keep_all_predictions: bool = False,
        validate: bool = True,
        future_tolerance_s: float = 300.0,
        screening_metrics: Path | None = None,
        model_name: str = "model",
    ) -> None:
        from freshrec.model.export import spec_of
        from freshrec.online.screening import Screener

        self.model = model
        self.spec = spec_of(model)
        self.serving_model = serving_model
        self.featurizer = featurizer
        self.settings = settings
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.repository = repository
        self.serving_version = parent_version
        # A batch version labelled stable since the learner started (set by superseded_by / a lost
        # compare-and-set): the learner exports no more; its owner restarts it from that version.
        self.superseded: int | None = None
        self.quarantine_dir = quarantine_dir
        self.push = push
        self.on_guard_failure = on_guard_failure
        self.on_export = on_export
        self.validate = validate
        self.future_tolerance_s = future_tolerance_s
        self.policy = GuardPolicy.from_settings(settings)
        self.metrics = PrequentialMetrics(window=settings.prequential_window, keep_all=keep_all_predictions)
        self.serving_metrics = PrequentialMetrics(
            window=settings.prequential_window, keep_all=keep_all_predictions
        )
        self.seen = SeenIds(settings.seen_ids_capacity)
        self.totals = Totals()
        self.exports: list[ExportRecord] = []
        self.buffer = pd.DataFrame()  # featurized impressions waiting for their click window to close
        self.watermark: pd.Timestamp | None = None
        self._window = _GuardWindow()
        self._reference: pd.DataFrame | None = None  # events learned before the serving version was exported
        self._recent_learned: list[pd.DataFrame] = []
        self._positions: list[Any] = []
        self._last_export_time = time.monotonic()
        self._learned_since_export = 0
        self._newest_entered_at: float | None = None
        self._checkpoint_seq = 0
        self.screener = (
            Screener(
                settings.screening,
                self.state_dir / "screening" if self.state_dir is not None else None,
                screening_metrics,
                model_name,
                log_features=[
                    f.name for f in self.spec.features if f.encoding == "normalize" and f.params.get("log1p")
                ],
            )
            if settings.screening.enabled
            else None
        )
        self.activity_restored = False  # whether restore() brought the activity state back
        self.trainer = Trainer(self.model, settings)
        if self.serving_model is None:
            from freshrec.model.builder import build_model
            from freshrec.model.export import attach, settings_of

            self.serving_model = attach(
                build_model(self.spec, settings_of(model)), self.spec, settings_of(model)
            )
            _clone_weights(model, self.serving_model)
        self._good_weights = self.serving_model.get_weights()

    # ------------------------------------------------------------------------------------------ stepping
    def step(self, batch: Batch, source: EventSource | None = None) -> dict[str, Any]:
        """Process one polled batch (see the module docstring). Returns a small progress record."""
        raw = batch.events.reset_index(drop=True)
        self.totals.received += len(raw)
        entered = np.asarray(batch.entered_at, dtype=np.float64)
        if len(raw):
            ids = (
                raw["event_id"].astype(str).to_numpy()
                if "event_id" in raw.columns
                else np.array([""] * len(raw))
            )
            new = self.seen.mask_new(ids)
            self.totals.duplicates += int((~new).sum())
            raw = raw[new].reset_index(drop=True)
            if len(entered) == len(new):
                entered = entered[new]
            events = self._validated(raw)
            self.seen.add(i for i in ids[new] if i)
        else:
            events = raw
        record: dict[str, Any] = {"received": len(batch.events), "accepted": len(events)}
        if self.screener is not None:
            self._learn_released()
            if len(events) and not self._screen(events, record):
                events = events.iloc[:0]
        if len(events):
            if len(entered):
                self._newest_entered_at = max(self._newest_entered_at or 0.0, float(entered.max()))
            record.update(self._learn(events))
        self._positions.append(batch.positions)
        self.totals.batches += 1
        if (
            self.state_dir is not None
            and self.totals.batches % max(1, self.settings.checkpoint_every_batches) == 0
        ):
            self.checkpoint(source)
        if self._export_due():
            record["export"] = self.maybe_export()
        return record

    def _screen(self, events: pd.DataFrame, record: dict[str, Any]) -> bool:
        """Screen a batch before it is learned (see :mod:`freshrec.online.screening`); False: it is held."""
        assert self.screener is not None
        events = events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
        peek = getattr(self.featurizer, "peek", None)
        frame = peek(events) if peek is not None else None
        scores = predict(self.serving_model, frame, self.spec) if frame is not None else None
        numeric = [f.name for f in self.spec.features if f.encoding == "normalize"]
        verdict = self.screener.screen(events, frame, scores, numeric)
        if verdict.held:
            self.screener.hold(verdict)
            record["held"] = {"batch_id": verdict.batch_id, "reasons": verdict.reasons}
            return False
        self.screener.accept(verdict)
        return True

    def _learn_released(self) -> None:
        """Learn the batches an operator released since the last step (they join the reference)."""
        assert self.screener is not None
        for events, verdict in self.screener.released():
            events = events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
            self._learn(events)
            self.screener.learned_released(events, verdict)
            log.info("learned released batch %s (%d events)", verdict["batch_id"], len(events))

    def _validated(self, raw: pd.DataFrame) -> pd.DataFrame:
        if not self.validate or raw.empty:
            return raw
        from freshrec.data.validation import validate_events, write_quarantine

        result = validate_events(raw, future_tolerance_s=self.future_tolerance_s, source="online")
        if len(result.quarantined):
            self.totals.quarantined += len(result.quarantined)
            if self.quarantine_dir is not None:
                write_quarantine(
                    result.quarantined,
                    Path(self.quarantine_dir),
                    source="online",
                    name=f"online-{uuid.uuid4().hex}",
                )
            log.warning("quarantined %d online events: %s", len(result.quarantined), result.reasons)
        return result.accepted

    def _learn(self, events: pd.DataFrame) -> dict[str, Any]:
        from freshrec.model.spec import frame_to_inputs, labels_of

        events = events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
        frame = self.featurizer(events)
        if self.push is not None and hasattr(self.featurizer, "fresh_rows"):
            try:
                self.push(*self.featurizer.fresh_rows(events))
            except Exception as exc:  # a feature-store outage must not stop learning
                log.warning("pushing fresh activity features failed: %s", exc)
        y = labels_of(frame, self.spec)
        inputs = frame_to_inputs(frame, self.spec)
        serv = predict_inputs(self.serving_model, inputs)
        # Test-then-train slice by slice: each train_batch slice is scored, then learned, before the next
        # is scored, so an id's later events of this micro-batch already see its earlier ones.
        size = max(1, self.settings.train_batch)
        times = frame["event_timestamp"]
        cands, learned = [], 0
        for start in range(0, len(frame), size):
            rows = slice(start, start + size)
            newest = pd.Timestamp(times.iloc[rows].max())
            self.watermark = newest if self.watermark is None or newest > self.watermark else self.watermark
            part_inputs = {name: values[rows] for name, values in inputs.items()}
            if self.settings.label_delay_s > 0:  # learns older, now-labelled rows: score and train apart
                cands.append(predict_inputs(self.model, part_inputs))
                learned += self._train(frame.iloc[rows])
            else:
                cands.append(self.trainer.score_then_train(part_inputs, y[rows]))
                for _ in range(max(1, self.settings.epochs_per_batch) - 1):
                    self.trainer.train(part_inputs, y[rows])
        if self.settings.label_delay_s <= 0:
            learned = self._note_learned(frame)
        cand = np.concatenate(cands)
        first, last = str(events["event_timestamp"].iloc[0]), str(events["event_timestamp"].iloc[-1])
        rec = self.metrics.update(y, cand, first, last)
        self.serving_metrics.update(y, serv, first, last)
        self._window.add(y, cand, serv)
        self.totals.scored += len(frame)
        # The newest time seen, not the last: a late redelivery must not move it backwards.
        self.totals.newest_event_time = _newest(
            self.totals.newest_event_time, events["event_timestamp"].max()
        )
        return {"batch_logloss": rec.logloss, "window_auc": rec.window_auc, "learned": learned}

    def _train(self, frame: pd.DataFrame) -> int:
        from freshrec.model.spec import frame_to_inputs, labels_of

        delay = self.settings.label_delay_s
        if delay > 0:
            buf = pd.concat([self.buffer, frame], ignore_index=True) if len(self.buffer) else frame
            closed = buf["event_timestamp"] + pd.Timedelta(seconds=delay) <= self.watermark
            ready, self.buffer = buf[closed].reset_index(drop=True), buf[~closed].reset_index(drop=True)
        else:
            ready = frame
        if ready.empty:
            return 0
        inputs = frame_to_inputs(ready, self.spec)
        y = labels_of(ready, self.spec)
        for _ in range(max(1, self.settings.epochs_per_batch)):
            self.trainer.train(inputs, y)
        return self._note_learned(ready)

    def _note_learned(self, ready: pd.DataFrame) -> int:
        """Book-keeping for rows just learned (totals, export counter, the guard's reference rows)."""
        self.totals.learned += len(ready)
        self._learned_since_export += len(ready)
        self.totals.newest_learned_time = _newest(
            self.totals.newest_learned_time, ready["event_timestamp"].max()
        )
        self._recent_learned.append(ready)
        # Bounded: only the newest guard_reference_size learned rows are kept for the next reference set.
        while sum(len(f) for f in self._recent_learned[1:]) >= self.settings.guard_reference_size:
            self._recent_learned.pop(0)
        return len(ready)

    def run(
        self,
        source: EventSource,
        max_events: int | None = None,
        until_idle: bool = False,
        idle_timeout_s: float = 1.0,
        progress: Callable[[dict[str, Any]], Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Totals:
        """Poll and step until ``max_events`` were received, the source is idle (``until_idle``), or stopped."""
        while True:
            if should_stop is not None and should_stop():
                break
            want = self.settings.micro_batch
            if max_events is not None:
                want = min(want, max_events - self.totals.received)
                if want <= 0:
                    break
            batch = source.poll(want, idle_timeout_s)
            if len(batch) == 0 and not batch.positions:
                if until_idle:
                    break
                continue
            rec = self.step(batch, source)
            if progress is not None:
                progress(rec)
        if self.state_dir is not None:
            self.checkpoint(source)
        return self.totals

    # ------------------------------------------------------------------------------------------ export
    def _export_due(self) -> bool:
        if self.repository is None or self._window.n < self.settings.guard_min_events:
            return False
        if self._learned_since_export >= self.settings.export_every_events:
            return True
        return (
            self._learned_since_export > 0
            and time.monotonic() - self._last_export_time >= self.settings.export_every_s
        )

    def guard(self) -> GuardResult:
        """Evaluate the guard on the events since the last export (and the reference set, if any)."""
        from freshrec.model.spec import labels_of

        y, cand, serv = self._window.arrays()
        reference = None
        if self._reference is not None and len(self._reference):
            ref = self._reference
            reference = (
                labels_of(ref, self.spec),
                predict(self.model, ref, self.spec),
                predict(self.serving_model, ref, self.spec),
            )
        return check_guard(self.policy, y, cand, serv, weights=self.model.get_weights(), reference=reference)

    def superseded_by(self) -> int | None:
        """The stable version when it is no longer this learner's to move, else None.

        That is a version promoted by someone else (a batch-retrained canary) since the learner started: it is
        neither the learner's own serving version, nor one of its exports, nor an online export (an older
        checkpoint's lineage). Exports from here on would not descend from what the stable pods serve.
        """
        return None if self.repository is None else self._foreign(self.repository.stable())

    def _foreign(self, stable: int | None) -> int | None:
        ours = {self.serving_version, *(e.version for e in self.exports if e.version is not None)}
        if stable is None or stable in ours:
            return None
        if self.repository.metadata(stable).get("source") == "online":
            return None
        return stable

    def maybe_export(self) -> dict[str, Any]:
        """Run the guard; publish a version if it passes, else keep the serving one (and maybe reset).

        Nothing is published once another version was promoted (:meth:`superseded_by`): the learner's
        owner restarts it from the new stable version.
        """
        stable = self.repository.stable() if self.repository is not None else None
        moved = self.superseded if self.superseded is not None else self._foreign(stable)
        if moved is not None:
            if self.superseded is None:
                log.warning(
                    "v%s was promoted since this learner started from v%s: no more exports from this lineage",
                    moved,
                    self.serving_version,
                )
            self.superseded = moved
            return {"passed": False, "version": None, "reasons": [f"superseded by v{moved}"]}
        result = self.guard()
        rec = ExportRecord(
            attempted_at=time.time(),
            passed=result.passed,
            version=None,
            parent_version=self.serving_version,
            events_learned=self.totals.learned,
            newest_event_time=self.totals.newest_learned_time,
            newest_entered_at=self._newest_entered_at,
            guard=result.to_dict(),
        )
        if result.passed:
            rec.version = self._publish(rec, expect=stable)
            rec.published_at = time.time()
            self.totals.exports += 1
            _clone_weights(self.model, self.serving_model)
            self._good_weights = self.serving_model.get_weights()
            self.serving_version = rec.version
            self._reference = (
                pd.concat(self._recent_learned, ignore_index=True) if self._recent_learned else None
            )
            log.info("exported version %s (%d events learned)", rec.version, self.totals.learned)
            if self.on_export is not None:
                self.on_export(rec)
        else:
            self.totals.guard_failures += 1
            log.warning(
                "guard failed, keeping version %s: %s", self.serving_version, "; ".join(result.reasons)
            )
            if self.settings.reset_on_guard_failure:
                self.reset_to_good()
            if self.on_guard_failure is not None:
                try:
                    self.on_guard_failure(result, rec)
                except Exception as exc:  # an unreachable alert receiver must not stop learning
                    log.error("guard-failure callback failed: %s", exc)
        self.exports.append(rec)
        self._window = _GuardWindow()
        self._learned_since_export = 0
        self._last_export_time = time.monotonic()
        if self.state_dir is not None:
            self.checkpoint(None)
        return {"passed": result.passed, "version": rec.version, "reasons": result.reasons}

    def reset_to_good(self) -> None:
        """Back to the weights of the last good (serving) version, with fresh optimizers."""
        self.model.set_weights(self._good_weights)
        self.trainer = Trainer(self.model, self.settings)
        self.totals.resets += 1

    def _publish(self, rec: ExportRecord, expect: int | None) -> int:
        from freshrec.model.export import export_model

        assert self.repository is not None
        staging_root = Path(self.repository.models_dir) / ".online-exports"
        staging_root.mkdir(parents=True, exist_ok=True)
        out = staging_root / f"export-{uuid.uuid4().hex}"
        # TF Serving's warmup records from the newest learned events: what the server is asked next.
        recent = pd.concat(self._recent_learned).tail(100) if self._recent_learned else None
        export_model(self.model, out, warmup=recent)
        metadata = {
            "source": "online",
            "parent_version": rec.parent_version,
            "events_learned": rec.events_learned,
            "newest_event_time": rec.newest_event_time,
            "newest_entered_at": rec.newest_entered_at,
            "prequential": {
                "window_logloss": _finite(self.metrics.window_logloss()),
                "window_auc": _finite(self.metrics.window_auc()),
                "serving_window_logloss": _finite(self.serving_metrics.window_logloss()),
                "serving_window_auc": _finite(self.serving_metrics.window_auc()),
                "events": self.metrics.n,
            },
            "guard": rec.guard,
            "spec_hash": self.spec.hash(),
        }
        try:
            version = self.repository.publish(out, metadata, move=True)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if self.settings.label_stable:
            from freshrec.model.repository import LabelMoved

            try:
                # Compare-and-set from the label read before the export: a promotion meanwhile wins.
                self.repository.set_label("stable", version, expect=expect)
            except LabelMoved as exc:
                log.warning("v%s published but not labelled stable: %s", version, exc)
                self.superseded = exc.current
        return version

    # ------------------------------------------------------------------------------------------ checkpoint
    def checkpoint(self, source: EventSource | None) -> Path | None:
        """Write the learner's state atomically, then commit the positions it includes to ``source``."""
        if self.state_dir is None:
            return None
        self._checkpoint_seq += 1
        name = f"ckpt-{int(time.time() * 1000)}-{self._checkpoint_seq:06d}"
        with atomic_directory(self.state_dir / name) as tmp:
            self._write_checkpoint(tmp)
        atomic_write_text(self.state_dir / CHECKPOINT_POINTER, name)
        for old in self.state_dir.glob("ckpt-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        # Only now are these events safe: tell the source it may forget them.
        # Without a source (a checkpoint at export time) the positions wait for the next checkpoint's commit.
        if source is not None:
            for positions in self._positions:
                source.commit(positions)
            self._positions = []
        return self.state_dir / name

    def _write_checkpoint(self, tmp: Path) -> None:
        weights = {f"w{i}": w for i, w in enumerate(self.model.get_weights())}
        opt_state = self.trainer.state()
        weights.update({f"o{i}": v for i, v in enumerate(opt_state["dense"])})
        weights.update({f"e{i}": v for i, v in enumerate(opt_state["embedding"])})
        with open(tmp / "weights.npz", "wb") as fh:
            np.savez(fh, **weights)
        pd.DataFrame({"event_id": self.seen.to_list()}).to_parquet(tmp / "seen.parquet", index=False)
        if len(self.buffer):
            self.buffer.to_parquet(tmp / "buffer.parquet", index=False)
        activity = getattr(self.featurizer, "activity", None)
        if activity is not None:
            activity.save(tmp / ACTIVITY_FILE)  # plain arrays: loading it never runs code (no pickle)
        state = {
            "totals": asdict(self.totals),
            "serving_version": self.serving_version,
            "n_weights": len(self.model.get_weights()),
            "n_optimizer": len(opt_state["dense"]),
            "n_embedding_optimizer": len(opt_state["embedding"]),
            "watermark": str(self.watermark) if self.watermark is not None else None,
            "positions": _jsonable(self._positions),
            "prequential": self.metrics.state(),
            "serving_prequential": self.serving_metrics.state(),
            "exports": [asdict(e) for e in self.exports[-50:]],
            "newest_entered_at": self._newest_entered_at,
        }
        (tmp / "state.json").write_text(json.dumps(state, default=str))

    def restore(self) -> bool:
        """Load the latest checkpoint from ``state_dir``; False when there is none."""
        if self.state_dir is None:
            return False
        pointer = self.state_dir / CHECKPOINT_POINTER
        if not pointer.is_file():
            return False
        path = self.state_dir / pointer.read_text().strip()
        state = json.loads((path / "state.json").read_text())
        with np.load(path / "weights.npz", allow_pickle=False) as data:
            self.model.set_weights([data[f"w{i}"] for i in range(state["n_weights"])])
            if "n_embedding_optimizer" in state:
                self.trainer.restore(
                    {
                        "dense": [data[f"o{i}"] for i in range(state["n_optimizer"])],
                        "embedding": [data[f"e{i}"] for i in range(state["n_embedding_optimizer"])],
                    }
                )
            else:  # a checkpoint of the single-optimizer learner: weights only, fresh optimizers
                log.warning("checkpoint %s predates the split optimizers; optimizer state not restored", path)
        self.seen = SeenIds(
            self.settings.seen_ids_capacity, pd.read_parquet(path / "seen.parquet")["event_id"].tolist()
        )
        self.activity_restored = False
        act = path / ACTIVITY_FILE
        if act.is_file() and hasattr(self.featurizer, "activity"):
            from freshrec.features.activity import ActivityState

            self.featurizer.activity = ActivityState.load(act)
            self.activity_restored = True
        elif (path / "activity.pkl").is_file():
            # A checkpoint of an older learner: a pickle would run whatever code the file holds, so it is
            # never loaded; the activity state is rebuilt from the event log instead (build_learner).
            log.warning(
                "checkpoint %s keeps its activity state as a pickle: not loaded, rebuilt from events", path
            )
        buf = path / "buffer.parquet"
        self.buffer = pd.read_parquet(buf) if buf.is_file() else pd.DataFrame()
        self.totals = Totals(**state["totals"])
        self.watermark = pd.Timestamp(state["watermark"]) if state.get("watermark") else None
        self.metrics.restore(state.get("prequential", {}))
        self.serving_metrics.restore(state.get("serving_prequential", {}))
        self._newest_entered_at = state.get("newest_entered_at")
        self.serving_version = state.get("serving_version", self.serving_version)
        log.info("restored checkpoint %s: %s", path.name, state["totals"])
        return True

    def report(self) -> dict[str, Any]:
        """A JSON-able summary for the run report."""
        return {
            "totals": asdict(self.totals),
            "serving_version": self.serving_version,
            "prequential": {
                "window_logloss": _finite(self.metrics.window_logloss()),
                "window_auc": _finite(self.metrics.window_auc()),
                "mean_logloss": _finite(self.metrics.mean_logloss()),
                "serving_window_logloss": _finite(self.serving_metrics.window_logloss()),
                "serving_window_auc": _finite(self.serving_metrics.window_auc()),
            },
            "batches": [r.to_dict() for r in self.metrics.records[-500:]],
            "exports": [asdict(e) for e in self.exports],
        }


def _newest(current: str | None, candidate: Any) -> str | None:
    """The later of a stored time (as text) and ``candidate`` (NaT/None keeps ``current``)."""
    if candidate is None or pd.isna(candidate):
        return current
    candidate = pd.Timestamp(candidate)
    try:
        if current is not None and pd.Timestamp(current) >= candidate:
            return current
    except (TypeError, ValueError):  # an unreadable or tz-naive stored value: the new one replaces it
        pass
    return str(candidate)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _read_table(path: Path, key: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"profile table {path} not found; run `freshrec data prepare` first")
    df = pd.read_parquet(path)
    if key not in df.columns:
        raise ValueError(f"{path} lacks its key column {key!r}")
    return df


def build_learner(
    settings: Any,
    *,
    push_features: bool | None = None,
    on_export: Callable[[ExportRecord], Any] | None = None,
    alert: bool = True,
    history: pd.DataFrame | None = None,
) -> OnlineLearner:
    """An :class:`OnlineLearner` wired to the workdir: starts from the stable version (or resumes).

    The model and the serving copy are rebuilt from the stable version's spec and Keras weights; profiles
    come from ``<tables_dir>/{users,items}.parquet``; the activity state is warmed with ``history`` (default:
    the whole event log) unless a checkpoint restores it. A checkpoint is resumed only while its serving
    version is still the stable one or one the learner itself exported; if a batch-retrained model has
    been promoted since, the learner starts over from it (keeping its seen-set, so nothing is re-counted).

    Raises:
        RuntimeError: the repository has no version to start from.
    """
    from freshrec.model.export import load_keras_model
    from freshrec.model.repository import ModelRepository
    from freshrec.online.screening import metrics_textfile

    repo = ModelRepository(settings.models_dir, settings.model.name)
    version = repo.stable() or repo.latest()
    if version is None:
        raise RuntimeError(f"no model version under {repo.root} to learn from; train and publish one first")
    model = load_keras_model(repo.path(version))
    serving = load_keras_model(repo.path(version))
    featurizer = Featurizer(
        _read_table(settings.tables_dir / "users.parquet", "user_id"),
        _read_table(settings.tables_dir / "items.parquet", "item_id"),
    )
    push = None
    if push_features if push_features is not None else settings.online.push_features:
        try:
            from freshrec.features.store import OnlineFeatures

            push = OnlineFeatures(settings).push
        except Exception as exc:  # no registry yet (features not applied): learn without pushing
            log.warning("feature store not available, fresh activity will not be pushed: %s", exc)
    on_guard_failure = None
    if alert:
        from freshrec.monitoring.alerts import AlertManager
        from freshrec.monitoring.monitor import guard_failures_in_a_row

        manager = AlertManager(settings.alerts, settings.state_dir)

        def on_guard_failure(result: GuardResult, rec: ExportRecord) -> None:
            # One rejected update is the guard doing its job; several in a row mean nothing fresh reaches
            # serving any more, and that needs a person (the catalogue's FreshrecOnlineGuardFailing).
            n = guard_failures_in_a_row(learner.exports)
            if n >= settings.monitor.guard_failures_to_page:
                manager.fire(
                    settings.model.name,
                    "FreshrecOnlineGuardFailing",
                    f"the online learner's export guard failed {n} times in a row; version "
                    f"{rec.parent_version} stays: " + "; ".join(result.reasons),
                    cause="online_learner",
                    details=result.to_dict(),
                )

    learner = OnlineLearner(
        model,
        serving,
        featurizer,
        settings.online,
        state_dir=settings.state_dir / "online" / settings.model.name,
        repository=repo,
        parent_version=version,
        quarantine_dir=settings.quarantine_dir,
        push=push,
        on_guard_failure=on_guard_failure,
        on_export=on_export,
        future_tolerance_s=settings.data.future_tolerance_s,
        screening_metrics=metrics_textfile(settings),
        model_name=settings.model.name,
    )
    restored = learner.restore()
    if restored and learner.serving_version != version:
        known = learner.serving_version in repo.versions()
        meta = repo.metadata(version)
        if meta.get("source") == "online" and known:
            # The stable version is one of ours (maybe older than the checkpoint's): keep learning from it.
            serving_path = repo.path(learner.serving_version)
            learner.serving_model.set_weights(load_keras_model(serving_path).get_weights())
            learner._good_weights = learner.serving_model.get_weights()
        else:
            log.info(
                "stable version %s replaced the learner's %s: restarting from it",
                version,
                learner.serving_version,
            )
            learner.model.set_weights(serving.get_weights())
            learner.trainer = Trainer(learner.model, settings.online)
            learner.serving_version = version
    elif restored and learner.serving_version is not None:
        learner.serving_model.set_weights(load_keras_model(repo.path(learner.serving_version)).get_weights())
        learner._good_weights = learner.serving_model.get_weights()
    if not restored or not learner.activity_restored:
        if history is None:
            from freshrec.data.eventlog import EventLog

            history = EventLog(settings.eventlog_dir).read()
        if history is not None and len(history):
            featurizer.activity.update(history)
    return learner
