"""Model repository polling and version loading for the local TF-Serving-compatible server.

The server reads the same things TF Serving reads: ``<models_dir>/models.config`` (a
``ModelServerConfig`` text proto with ``version_labels``) and, per model, numbered version folders
under its ``base_path`` holding a SavedModel. A :class:`ModelManager` polls both; readers get an
immutable snapshot (a new dict is built and the reference swapped), so a request that resolved a
version keeps it even while the poller unloads it, and no request ever sees a half-loaded version.

Version policy: keep the newest loadable version(s) (``latest {num_versions}``, default 1), every
labelled version, and the versions a ``specific`` policy lists (or all, for ``all``); unload the rest.
Unlike TF Serving, a ``specific`` policy does not stop the newest version from loading: the
repository writes ``specific`` (labelled versions) for TF Serving, and locally a new version must
still be reachable by number for the canary arm and the online learner.
A version that fails to load or to warm up is recorded as failed (status ``END`` with the error)
and never served; it is retried only when its folder changes. A label may only point at a loaded
version (TF Serving refuses the config otherwise): a label to a failed version keeps its old target.

Warm-up: a version is AVAILABLE only after the requests in its ``assets.extra/tf_serving_warmup_requests``
(TF Serving's warmup records, :mod:`freshrec.model.warmup`) have run ``warmup_iterations`` times, as the
binary does with ``--enable_model_warmup``; a failing record fails the load. A version without records is
run once on a synthetic one-row batch instead (local mode's own check), or, in TF Serving mode
(``tf_semantics``), loaded cold as the binary does.

``tf_semantics`` (``freshrec serve`` with the binary's flags, as the cluster rehearsal runs the Rollout):
``base_path`` is used exactly as written (relative to the working directory, no fallback to
``<models_dir>/<name>``), a ``specific`` version policy loads exactly those versions, and the model config
is read from the given file once or every ``config_poll_s`` seconds.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
CONFIG_FILE = "models.config"


class ServingError(Exception):
    """An error with a TF Serving status code name (``NOT_FOUND``, ``INVALID_ARGUMENT`` ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelEntry:
    """One model of the config: where its versions live and which to keep."""

    name: str
    base_path: Path
    labels: dict[str, int] = field(default_factory=dict)
    policy: str = "latest"  # latest | all | specific
    policy_versions: tuple[int, ...] = ()
    num_latest: int = 1


@dataclass
class Servable:
    """A loaded, warmed-up SavedModel version."""

    name: str
    version: int
    path: Path
    loaded: Any  # the tf.saved_model.load object; kept so the functions' variables stay alive
    signatures: dict[str, Any]
    signature_defs: Any  # tensorflow.core.protobuf.meta_graph_pb2 SignatureDef map (proto)
    input_specs: dict[str, dict[str, Any]]  # signature -> input name -> tf.TensorSpec
    loaded_at: float
    # signature -> server-side batching queue (``--enable_batching``); empty: each request runs alone
    batch_queues: dict[str, Any] = field(default_factory=dict)
    warmup_records: int = 0

    def signature(self, name: str | None) -> Any:
        """The concrete function for a signature name ('' or None = serving_default)."""
        key = name or DEFAULT_SIGNATURE
        fn = self.signatures.get(key)
        if fn is None:
            raise ServingError(
                "INVALID_ARGUMENT", f'Serving signature name: "{key}" not found in signature def'
            )
        return fn

    def predict(self, inputs: dict[str, Any], signature_name: str | None = None) -> dict[str, np.ndarray]:
        """Run a signature on named arrays (numpy or tf tensors); returns named numpy outputs.

        Raises:
            ServingError: INVALID_ARGUMENT for missing/extra inputs, wrong dtypes or shapes.
        """
        import tensorflow as tf

        key = signature_name or DEFAULT_SIGNATURE
        self.signature(key)  # INVALID_ARGUMENT for an unknown signature
        specs = self.input_specs[key]
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input names do not match signature {key}: missing {missing}, unexpected {extra}; "
                f"expected {sorted(specs)}",
            )
        tensors: dict[str, Any] = {}
        for name, spec in specs.items():
            value = inputs[name]
            try:
                tensors[name] = (
                    value if isinstance(value, tf.Tensor) else tf.constant(value, dtype=spec.dtype)
                )
            except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
                raise ServingError(
                    "INVALID_ARGUMENT", f"input {name!r} is not of expected type {spec.dtype.name}: {exc}"
                ) from exc
            if not spec.shape.is_compatible_with(tensors[name].shape):
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"input {name!r} has shape {tensors[name].shape.as_list()}, "
                    f"signature expects {spec.shape.as_list()}",
                )
        queue = self.batch_queues.get(key)
        if queue is not None:
            from freshrec.serving.batching import BatchingError

            try:
                return queue.run({k: v.numpy() for k, v in tensors.items()})
            except BatchingError as exc:
                raise ServingError(exc.code, exc.message) from exc
        return self.run(key, tensors)

    def run(self, key: str, tensors: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run signature ``key`` on validated inputs (tensors or arrays of the signature's dtypes)."""
        import tensorflow as tf

        specs = self.input_specs[key]
        try:
            out = self.signatures[key](
                **{k: tf.constant(v, dtype=specs[k].dtype) for k, v in tensors.items()}
            )
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            raise ServingError(
                "INVALID_ARGUMENT", str(exc).splitlines()[0] if str(exc) else repr(exc)
            ) from exc
        return {k: v.numpy() for k, v in out.items()}

    def close(self, scheduler: Any = None) -> None:
        """Release the batching queues of an unloaded version (requests already queued still run)."""
        if scheduler is not None:
            for queue in self.batch_queues.values():
                scheduler.remove(queue)


@dataclass(frozen=True)
class ModelView:
    """Immutable snapshot of one model: loaded versions, labels, failures."""

    entry: ModelEntry
    servables: dict[int, Servable]
    labels: dict[str, int]
    failed: dict[int, str]

    def latest(self) -> Servable | None:
        return self.servables[max(self.servables)] if self.servables else None


def parse_model_config(path: Path, models_dir: Path, tf_semantics: bool = False) -> list[ModelEntry]:
    """Parse a TF Serving ``ModelServerConfig`` text proto into model entries.

    Relative ``base_path`` values are taken relative to ``models_dir``; a base path that does not
    exist here (e.g. a container path) falls back to ``models_dir/<name>``. With ``tf_semantics`` a
    ``base_path`` is used as TF Serving uses it: as written, relative to the working directory.

    Raises:
        ValueError: the file is not a valid ModelServerConfig text proto (names the file).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as exc:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {exc}") from exc
    entries = []
    for model in config.model_config_list.config:
        if not model.name:
            raise ValueError(f"{path}: a model config without a name")
        if tf_semantics:
            if not model.base_path:
                raise ValueError(f"{path}: model {model.name!r} has no base_path")
            base = Path(model.base_path).absolute()
        else:
            base = Path(model.base_path) if model.base_path else models_dir / model.name
            if not base.is_absolute():
                base = models_dir / base
            if not base.exists() and (models_dir / model.name).exists():
                base = models_dir / model.name
        policy, versions, num_latest = "latest", (), 1
        which = model.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            policy = "all"
        elif which == "specific":
            policy, versions = "specific", tuple(int(v) for v in model.model_version_policy.specific.versions)
        elif which == "latest":
            num_latest = max(1, model.model_version_policy.latest.num_versions)
        entries.append(
            ModelEntry(
                name=model.name,
                base_path=base,
                labels={k: int(v) for k, v in model.version_labels.items()},
                policy=policy,
                policy_versions=versions,
                num_latest=num_latest,
            )
        )
    return entries


def list_versions(base_path: Path) -> dict[int, Path]:
    """Servable version folders under a model's base path.

    The repository's rule (``ModelRepository.versions``): a numbered folder with a SavedModel,
    ``variables/`` and a readable ``freshrec.json``; staging folders and anything else are ignored.
    """
    from freshrec.model.repository import ModelRepository

    try:
        if not base_path.is_dir():
            return {}
        repo = ModelRepository(base_path.parent, base_path.name)
        return {v: repo.path(v) for v in repo.versions()}
    except OSError as exc:
        # e.g. a version written by another user with mode 0700: serve nothing, keep running
        log.error("cannot read the versions under %s: %s", base_path, exc)
        return {}


def _folder_stamp(path: Path) -> float:
    try:
        return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())])
    except OSError:
        return 0.0


def load_servable(
    name: str,
    version: int,
    path: Path,
    *,
    warmup: bool = True,
    warmup_iterations: int = 1,
    synthetic_warmup: bool = True,
    scheduler: Any = None,
) -> Servable:
    """Load a SavedModel version and warm it up before it is served.

    Args:
        name: the model name.
        version: the version number.
        path: the version folder.
        warmup: replay ``assets.extra/tf_serving_warmup_requests`` (``--enable_model_warmup``).
        warmup_iterations: times each record runs (``--num_request_iterations_for_warmup``).
        synthetic_warmup: without records, run each signature once on a one-row batch.
        scheduler: a :class:`freshrec.serving.batching.BatchScheduler` (``--enable_batching``): every
            signature gets a batching queue in it; warm-up requests go through it too.

    Raises:
        Exception: whatever TensorFlow raises for a missing/corrupt SavedModel or a failing warm-up.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    pb = path / "saved_model.pb"
    if not pb.exists():
        raise FileNotFoundError(f"{path}: no saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pb.read_bytes())
    if not proto.meta_graphs:
        raise ValueError(f"{pb}: no meta graph")
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ValueError(f"{path}: the SavedModel has no serving signatures")
    input_specs = {k: dict(fn.structured_input_signature[1]) for k, fn in signatures.items()}
    servable = Servable(
        name=name,
        version=version,
        path=path,
        loaded=loaded,
        signatures=signatures,
        signature_defs=proto.meta_graphs[0].signature_def,
        input_specs=input_specs,
        loaded_at=time.time(),
    )
    if scheduler is not None:
        for key in signatures:
            servable.batch_queues[key] = scheduler.queue(
                functools.partial(servable.run, key), f"{name}/{version}/{key}"
            )
    try:
        _warm_up(servable, path, warmup, warmup_iterations, synthetic_warmup)
    except BaseException:
        servable.close(scheduler)
        raise
    return servable


def _warm_up(servable: Servable, path: Path, warmup: bool, iterations: int, synthetic: bool) -> None:
    from freshrec.model.warmup import read_warmup_requests, request_arrays, warmup_path

    records = read_warmup_requests(path) if warmup else []
    for i, record in enumerate(records):
        signature, inputs = request_arrays(record)
        for _ in range(max(1, iterations)):
            try:
                servable.predict(inputs, signature or None)
            except ServingError as exc:
                raise ValueError(f"warmup record {i} of {warmup_path(path)} failed: {exc.message}") from exc
    servable.warmup_records = len(records)
    if records:
        log.info(
            "warmed up %s version %d with %d records from %s",
            servable.name,
            servable.version,
            len(records),
            warmup_path(path),
        )
    elif warmup and synthetic:
        for key, specs in servable.input_specs.items():  # pay tracing/allocation now
            servable.predict({n: _warmup_value(s) for n, s in specs.items()}, key)
    elif warmup:
        log.info("No warmup data file found at %s", warmup_path(path))


def _warmup_value(spec: Any) -> np.ndarray:
    shape = [1 if d is None else d for d in spec.shape.as_list()] if spec.shape.rank is not None else [1]
    if spec.dtype.name == "string":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)


class ModelManager:
    """Keeps the wanted versions of every configured model loaded; thread-safe snapshot reads."""

    def __init__(
        self,
        models_dir: Path,
        default_model: str,
        poll_interval_s: float = 1.0,
        loader: Callable[[str, int, Path], Servable] = load_servable,
        *,
        config_file: Path | None = None,
        config_poll_s: float = 0.0,
        tf_semantics: bool = False,
        scheduler: Any = None,
        default_base_path: Path | None = None,
    ) -> None:
        """Args:
        models_dir: the repository (``models.config`` and ``<name>/<version>/`` folders).
        default_model: the model served when there is no config file.
        poll_interval_s: seconds between polls of the version folders (``--file_system_poll_wait_seconds``).
        loader: loads one version (tests pass a fake).
        config_file: the model config (``--model_config_file``); default ``<models_dir>/models.config``,
            re-read on every poll.
        config_poll_s: with ``config_file``: seconds between re-reads (0: read once, as TF Serving does).
        tf_semantics: TF Serving's rules for base paths and version policies (see the module docstring).
        scheduler: the batch scheduler, so that unloaded versions release their queues.
        default_base_path: the default model's base path (``--model_base_path``); default
            ``<models_dir>/<default_model>``.
        """
        self.models_dir = Path(models_dir)
        self.default_model = default_model
        self.poll_interval_s = poll_interval_s
        self._loader = loader
        self.config_file = Path(config_file) if config_file is not None else None
        self.config_poll_s = config_poll_s
        self.tf_semantics = tf_semantics
        self.scheduler = scheduler
        self.default_base_path = Path(default_base_path) if default_base_path is not None else None
        self._config_entries: list[ModelEntry] | None = None
        self._config_read_at = 0.0
        self._views: dict[str, ModelView] = {}
        self._failed_stamps: dict[tuple[str, int], float] = {}
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._config_error_logged: str | None = None
        self._label_warnings: set[tuple[str, str, int]] = set()

    # --- reading -------------------------------------------------------------------------------
    def views(self) -> dict[str, ModelView]:
        """The current snapshot: model name -> view."""
        return self._views

    def view(self, name: str) -> ModelView:
        view = self._views.get(name)
        if view is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return view

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request: a version, a label, or the latest loaded version.

        Raises:
            ServingError: NOT_FOUND (unknown model or version), INVALID_ARGUMENT (unknown label),
                as TF Serving answers.
        """
        view = self._views.get(name)
        if label:
            if view is None or label not in view.labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = view.labels[label]
        if view is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError("NOT_FOUND", f"Servable not found for request: {request}")
        if version is None:
            servable = view.latest()
            if servable is None:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return servable
        servable = view.servables.get(version)
        if servable is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return servable

    # --- polling -------------------------------------------------------------------------------
    def config_entries(self) -> list[ModelEntry]:
        """Models from the config file, or the default model when there is none (or it is unreadable).

        Raises:
            ValueError: an explicit ``config_file`` that cannot be read on the first read (TF Serving
                does not start then).
        """
        if self.config_file is not None:
            return self._explicit_config_entries()
        path = self.models_dir / CONFIG_FILE
        if path.exists():
            try:
                entries = parse_model_config(path, self.models_dir, self.tf_semantics)
                self._config_error_logged = None
                return entries
            except (ValueError, OSError) as exc:
                if self._config_error_logged != str(exc):
                    log.error("keeping the previous model config: %s", exc)
                    self._config_error_logged = str(exc)
                return [v.entry for v in self._views.values()] or [self._default_entry()]
        return [self._default_entry()]

    def _explicit_config_entries(self) -> list[ModelEntry]:
        assert self.config_file is not None
        due = self.config_poll_s > 0 and time.monotonic() - self._config_read_at >= self.config_poll_s
        if self._config_entries is None or due:
            try:
                entries = parse_model_config(self.config_file, self.models_dir, self.tf_semantics)
            except (ValueError, OSError) as exc:
                if self._config_entries is None:
                    raise ValueError(f"cannot read --model_config_file {self.config_file}: {exc}") from exc
                if self._config_error_logged != str(exc):
                    log.error("keeping the previous model config: %s", exc)
                    self._config_error_logged = str(exc)
                return self._config_entries
            self._config_entries, self._config_read_at = entries, time.monotonic()
            self._config_error_logged = None
        return self._config_entries

    def _default_entry(self) -> ModelEntry:
        base = self.default_base_path or self.models_dir / self.default_model
        return ModelEntry(name=self.default_model, base_path=base)

    def poll_once(self) -> bool:
        """Load new/wanted versions, apply labels, unload unwanted ones. Returns True if anything changed."""
        with self._poll_lock:
            changed = False
            new_views: dict[str, ModelView] = {}
            for entry in self.config_entries():
                old = self._views.get(entry.name)
                view = self._poll_model(entry, old)
                changed |= old is None or (view.servables.keys(), view.labels, view.failed) != (
                    old.servables.keys(),
                    old.labels,
                    old.failed,
                )
                new_views[entry.name] = view
            changed |= set(new_views) != set(self._views)
            self._views = new_views  # one reference swap: readers see the old or the new snapshot
        return changed

    def _poll_model(self, entry: ModelEntry, old: ModelView | None) -> ModelView:
        on_disk = list_versions(entry.base_path)
        loaded = dict(old.servables) if old else {}
        failed = {v: msg for v, msg in (old.failed.items() if old else []) if v in on_disk}
        for v in list(failed):
            if self._failed_stamps.get((entry.name, v)) != _folder_stamp(on_disk[v]):
                del failed[v]  # the folder changed since it failed: try again
        loadable = sorted((v for v in on_disk if v not in failed), reverse=True)

        def try_load(v: int) -> bool:
            if v in loaded:
                return True
            if v in failed or v not in on_disk:
                return False
            try:
                loaded[v] = self._loader(entry.name, v, on_disk[v])
                log.info("loaded %s version %d from %s", entry.name, v, on_disk[v])
                return True
            except Exception as exc:  # any load/warm-up failure: never serve it, keep the rest
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                failed[v] = msg
                self._failed_stamps[(entry.name, v)] = _folder_stamp(on_disk[v])
                log.error("not serving %s version %d: %s", entry.name, v, msg)
                return False

        wanted: set[int] = set()
        if entry.policy == "specific":
            wanted |= {v for v in entry.policy_versions if try_load(v)}
        # newest first; a version that fails to load is skipped, so the previous one stays. Also under a
        # `specific` policy: the repository writes one for TF Serving's sake (labelled versions), but
        # locally the newest version must be reachable by number (canary, online learner) too. TF Serving
        # itself (tf_semantics) loads exactly the listed versions.
        newest = 0
        for v in [] if (self.tf_semantics and entry.policy == "specific") else loadable:
            if try_load(v):
                wanted.add(v)
                newest += 1
                if entry.policy != "all" and newest >= entry.num_latest:
                    break
        wanted |= {v for v in set(entry.labels.values()) if try_load(v)}
        labels = {}
        for label, v in entry.labels.items():
            if v in loaded:
                labels[label] = v
            else:
                prev = old.labels.get(label) if old else None
                if prev is not None and prev in loaded and prev in on_disk:
                    labels[label] = prev
                    wanted.add(prev)
                note = (entry.name, label, v)
                if note not in self._label_warnings:
                    self._label_warnings.add(note)
                    log.warning(
                        "label %s of %s points at version %d, which is not loaded; %s",
                        label,
                        entry.name,
                        v,
                        f"keeping it on {prev}" if labels.get(label) is not None else "label not served",
                    )
        for v in [v for v in loaded if v not in wanted or v not in on_disk]:
            gone = loaded.pop(v)
            if isinstance(gone, Servable):
                gone.close(self.scheduler)
            log.info("unloaded %s version %d", entry.name, v)
        return ModelView(entry=entry, servables=loaded, labels=labels, failed=failed)

    def start(self) -> None:
        """Poll in a background thread every ``poll_interval_s`` (0: never again, as TF Serving's 0)."""
        intervals = [self.poll_interval_s]
        if self.config_file is not None:
            intervals.append(self.config_poll_s)
        self._interval = min((i for i in intervals if i > 0), default=0.0)
        if self._thread is not None or self._interval <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)  # a poll interval, or less when notified of a publish
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.poll_once()
            except Exception:  # the poller must survive a bad poll; the next one retries
                log.exception("model repository poll failed")

    def notify(self, wait: bool = False) -> bool:
        """A version was published: poll now instead of at the end of the interval (local mode only).

        Polling stays the contract (TF Serving's binary knows no notification); this only shortens the
        wait where the publisher runs beside the server. ``wait``: poll in the caller's thread and return
        once the new version is loaded (what :meth:`poll_once` returns); otherwise wake the poller.
        """
        if wait or self._thread is None:
            return self.poll_once()
        self._wake.set()
        return False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
