"""The ranking gateway: features from the online store, scores from the model server, ranked items.

``POST /v1/rank`` ``{"user_id": str, "item_ids": [str], "request_id"?: str}`` →
``{"request_id", "model_version", "arm", "items": [{"item_id", "score"}, ...]}`` sorted by score
(highest first). The gateway calls the model server over gRPC ``Predict`` — the production topology —
asking for the ``stable`` label (the latest version when the server has no such label) or, for the
canary arm, the canary's version number.

Traffic split: a user is in the canary arm when ``crc32(user_id) % 100 < weight``, so the split is
sticky per user and raising the weight only moves stable users to the canary, never back.

Admin: ``PUT /v1/admin/canary {"version": int|null, "weight": 0..100}``, ``GET /v1/admin/canary``,
``GET /v1/admin/stats`` → ``{"stable": {...}, "canary": {...}}`` with, per arm, ``requests``,
``errors``, ``error_rate``, ``latency_p50_ms``, ``latency_p99_ms`` (over the last 10 000 requests),
``score_mean``, ``model_version`` (last served); ``DELETE /v1/admin/stats`` resets them.
Every ranked item is logged (:mod:`freshrec.serving.predlog`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import Settings
from freshrec.io import atomic_write_json
from freshrec.serving.httpbase import HttpService, error_body, json_body
from freshrec.serving.predlog import PredictionLog

log = logging.getLogger(__name__)

# lookup(user_id, item_ids, as_of=<request time, UTC datetime>) -> one feature row per item
FeatureLookup = Callable[..., pd.DataFrame]
ARMS = ("stable", "canary")
CANARY_STATE_FILE = "gateway_canary.json"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class GatewayError(Exception):
    """A request error with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def arm_for(user_id: str, weight: int) -> str:
    """The arm of a user at a canary weight (0..100): a stable hash, so the choice is sticky."""
    if weight <= 0:
        return "stable"
    return "canary" if zlib.crc32(user_id.encode()) % 100 < weight else "stable"


class ArmStats:
    """Counters and a latency window of one arm; thread-safe."""

    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.window = window
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.errors = 0
            self.latencies: deque[float] = deque(maxlen=self.window)
            self.score_sum = 0.0
            self.score_n = 0
            self.model_version: int | None = None

    def record(self, seconds: float, scores: np.ndarray | None, version: int | None) -> None:
        with self._lock:
            self.requests += 1
            self.latencies.append(seconds)
            if scores is None:
                self.errors += 1
            else:
                self.score_sum += float(scores.sum())
                self.score_n += len(scores)
                self.model_version = version

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.fromiter(self.latencies, dtype=np.float64) * 1000
            return {
                "requests": self.requests,
                "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                "score_mean": self.score_sum / self.score_n if self.score_n else None,
                "model_version": self.model_version,
            }


class ModelClient:
    """gRPC client of the model server's PredictionService, with the signature's inputs cached."""

    def __init__(self, target: str, model_name: str, timeout_s: float = 5.0) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._inputs: dict[tuple[str, object], tuple[int, dict[str, tuple[int, int]]]] = {}
        self._no_stable_label_until = 0.0

    def close(self) -> None:
        self.channel.close()

    def _spec(self, request: Any, version: int | None, label: str | None) -> None:
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = "serving_default"
        if version is not None:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label

    def signature_inputs(
        self, version: int | None, label: str | None, refresh: bool = False
    ) -> dict[str, tuple[int, int]]:
        """Input name -> (TF dtype enum, rank) of the target's serving signature (cached)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        key = ("version", version) if version is not None else ("label", label)
        if not refresh and key in self._inputs:
            return self._inputs[key][1]
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request, version, label)
        request.metadata_field.append("signature_def")
        response = self.stub.GetModelMetadata(request, timeout=self.timeout_s)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        sig = sig_map.signature_def["serving_default"]
        inputs = {name: (info.dtype, len(info.tensor_shape.dim)) for name, info in sig.inputs.items()}
        self._inputs[key] = (response.model_spec.version.value, inputs)
        return inputs

    def predict(self, frame: pd.DataFrame, version: int | None, label: str | None) -> tuple[int, np.ndarray]:
        """Scores (click probabilities) for the frame's rows from the target version/label.

        Returns:
            (served version, scores of shape [n]).
        """
        import grpc

        if label == "stable" and time.monotonic() < self._no_stable_label_until:
            label = None
        try:
            return self._predict(frame, version, label, refresh=False)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label" in (
                exc.details() or ""
            ):
                # no stable label yet (first model, no rollout): the latest version is the stable one
                self._no_stable_label_until = time.monotonic() + 2.0
                return self._predict(frame, None, None, refresh=False)
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return self._predict(frame, version, label, refresh=True)  # the signature may have changed
            raise

    def _predict(
        self, frame: pd.DataFrame, version: int | None, label: str | None, refresh: bool
    ) -> tuple[int, np.ndarray]:
        from tensorflow_serving.apis import predict_pb2

        inputs = self.signature_inputs(version, label, refresh=refresh)
        request = predict_pb2.PredictRequest()
        self._spec(request, version, label)
        n = len(frame)
        for name, (dtype, rank) in inputs.items():
            if name not in frame.columns:
                raise GatewayError(
                    500, f"the model needs input {name!r}, which the feature lookup did not return"
                )
            encode_column(request.inputs[name], frame[name], dtype, rank, n)
        response = self.stub.Predict(request, timeout=self.timeout_s)
        served = response.model_spec.version.value
        key = ("version", version) if version is not None else ("label", label)
        if self._inputs.get(key, (served,))[0] != served:
            self._inputs.pop(key, None)  # the label moved: fetch the new version's signature next time
        outputs = response.outputs
        name = "probability" if "probability" in outputs else next(iter(outputs))
        return served, decode_tensor(outputs[name]).reshape(-1)[:n]


# tensorflow.DataType enum values (types.proto), to encode without importing TensorFlow's Python ops
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64, DT_BOOL = 1, 2, 3, 7, 9, 10
_NUMPY = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_INT64: np.int64,
    DT_BOOL: np.bool_,
}


def encode_column(proto: Any, values: pd.Series, dtype: int, rank: int, n: int) -> None:
    """Fill a TensorProto with a frame column, shaped [n] or [n, 1] as the signature wants."""
    proto.dtype = dtype
    proto.tensor_shape.dim.add().size = n
    if rank >= 2:
        proto.tensor_shape.dim.add().size = 1
    if dtype == DT_STRING:
        proto.string_val.extend(str(s).encode() for s in values.tolist())
    elif dtype in _NUMPY:
        arr = values.to_numpy()
        if dtype in (DT_INT32, DT_INT64) and arr.dtype.kind == "f":
            arr = np.nan_to_num(arr)
        proto.tensor_content = np.ascontiguousarray(arr.astype(_NUMPY[dtype])).tobytes()
    else:
        raise GatewayError(500, f"unsupported model input dtype enum {dtype}")


def decode_tensor(proto: Any) -> np.ndarray:
    if proto.dtype == DT_FLOAT and proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.float32)
    import tensorflow as tf

    return tf.make_ndarray(proto)


class Gateway:
    """The ranking gateway (``freshrec serving gateway``); also usable in-process (``rank``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        lookup: FeatureLookup | None = None,
        model_target: str | None = None,
        model_name: str | None = None,
        port: int | None = None,
        predictions_dir: Path | None = None,
        max_items: int | None = None,
    ) -> None:
        cfg = settings.serving
        self.settings = settings
        self.host = cfg.host
        self.port = cfg.gateway_port if port is None else port
        self.model_target = model_target or f"{cfg.host}:{cfg.grpc_port}"
        self.model_name = model_name or settings.model.name
        self.max_items = max_items or cfg.max_batch_size
        self.max_request_bytes = cfg.max_request_bytes
        self._lookup = lookup
        self.predlog = PredictionLog(Path(predictions_dir or settings.predictions_dir))
        self.stats_by_arm = {arm: ArmStats() for arm in ARMS}
        self._state_path = settings.state_dir / CANARY_STATE_FILE
        self._canary_version: int | None = None
        self._canary_weight = 0
        self._load_canary()
        self._client: ModelClient | None = None
        self._http: HttpService | None = None

    # --- canary ---------------------------------------------------------------------------------
    def _load_canary(self) -> None:
        try:
            state = json.loads(self._state_path.read_text())
            self._canary_version, self._canary_weight = state.get("version"), int(state.get("weight", 0))
        except (OSError, ValueError):
            pass

    def canary(self) -> dict[str, Any]:
        return {"version": self._canary_version, "weight": self._canary_weight}

    def set_canary(self, version: int | None, weight: int) -> dict[str, Any]:
        """Route ``weight``% of users (sticky) to model ``version``; ``version=None`` turns the canary off.

        Raises:
            GatewayError: 400 for a weight outside 0..100, a non-integer version, or weight > 0 without a version.
        """
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
            raise GatewayError(400, f"weight must be a number in 0..100, got {weight!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise GatewayError(400, f"version must be a positive integer or null, got {version!r}")
        if version is None and weight > 0:
            raise GatewayError(400, "a canary weight > 0 needs a version")
        self._canary_version, self._canary_weight = version, int(weight)
        atomic_write_json(self._state_path, self.canary(), indent=None)
        log.info("canary: version %s at weight %d", version, int(weight))
        return self.canary()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per arm: requests, errors, error_rate, latency_p50_ms, latency_p99_ms, score_mean, model_version."""
        return {arm: s.snapshot() for arm, s in self.stats_by_arm.items()}

    def reset_stats(self) -> None:
        for s in self.stats_by_arm.values():
            s.reset()

    # --- ranking --------------------------------------------------------------------------------
    @property
    def client(self) -> ModelClient:
        if self._client is None:
            self._client = ModelClient(self.model_target, self.model_name)
        return self._client

    @property
    def lookup(self) -> FeatureLookup:
        if self._lookup is None:
            from freshrec.features.store import OnlineFeatures

            self._lookup = OnlineFeatures(self.settings).lookup
        return self._lookup

    def validate(self, body: Any) -> tuple[str, list[str], str]:
        """(user_id, item_ids, request_id) of a rank request, or GatewayError(400).

        An optional ``as_of`` (ISO-8601 time) is checked by :func:`parse_as_of`.
        """
        if not isinstance(body, dict):
            raise GatewayError(400, "the request body must be a JSON object with user_id and item_ids")
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise GatewayError(400, "missing user_id (a non-empty string)")
        item_ids = body.get("item_ids")
        if not isinstance(item_ids, list):
            raise GatewayError(400, "missing item_ids (a list of item id strings)")
        if not item_ids:
            raise GatewayError(400, "item_ids is empty: nothing to rank")
        if len(item_ids) > self.max_items:
            raise GatewayError(400, f"too many items: {len(item_ids)} > {self.max_items}")
        bad = [i for i, x in enumerate(item_ids) if not isinstance(x, str) or not x]
        if bad:
            raise GatewayError(400, f"item_ids[{bad[0]}] is not a non-empty string: {item_ids[bad[0]]!r}")
        request_id = body.get("request_id") or uuid.uuid4().hex
        if not isinstance(request_id, str):
            raise GatewayError(400, "request_id must be a string")
        return user_id, item_ids, request_id

    def rank(
        self,
        user_id: str,
        item_ids: Sequence[str],
        request_id: str | None = None,
        as_of: Any = None,
    ) -> dict[str, Any]:
        """Rank items for a user; logs the predictions and counts the arm's stats.

        ``as_of`` (optional, ISO-8601): the impression's time in event time, logged as ``served_at``
        instead of the wall clock, so that a replay of historical traffic joins with its historical clicks.

        Raises:
            GatewayError: 400 for bad input, 502 when the feature store or the model server fails.
        """
        import grpc

        user_id, item_ids, request_id = self.validate(
            {"user_id": user_id, "item_ids": list(item_ids), "request_id": request_id}
        )
        served_at_ns = parse_as_of(as_of)
        start = time.perf_counter()
        version, weight = self._canary_version, self._canary_weight
        arm = arm_for(user_id, weight) if version is not None else "stable"
        stats = self.stats_by_arm[arm]
        try:
            try:
                # Features as of the request time (``as_of`` or now): time-since-last features are aged to
                # it, as the offline training set computes them at each event's time.
                now_ns = served_at_ns if served_at_ns is not None else time.time_ns()
                frame = self.lookup(user_id, item_ids, as_of=_utc_datetime(now_ns))
            except Exception as exc:  # the store's own errors vary by backend
                raise GatewayError(502, f"feature lookup failed: {type(exc).__name__}: {exc}") from exc
            if len(frame) != len(item_ids):
                raise GatewayError(
                    502, f"feature lookup returned {len(frame)} rows for {len(item_ids)} items"
                )
            if "user_id" not in frame.columns:
                frame = frame.assign(user_id=user_id)
            if "item_id" not in frame.columns:
                frame = frame.assign(item_id=item_ids)
            elif list(map(str, frame["item_id"].tolist())) != item_ids:
                raise GatewayError(502, "feature lookup returned the items in another order than asked")
            try:
                if arm == "canary":
                    served, scores = self.client.predict(frame, version, None)
                else:
                    served, scores = self.client.predict(frame, None, "stable")
            except grpc.RpcError as exc:
                raise GatewayError(502, f"model server: {exc.code().name}: {exc.details()}") from exc
        except GatewayError:
            stats.record(time.perf_counter() - start, None, None)
            raise
        order = np.argsort(-scores, kind="stable")
        self.predlog.add(request_id, user_id, item_ids, served, arm, scores, served_at_ns)
        stats.record(time.perf_counter() - start, scores, served)
        return {
            "request_id": request_id,
            "model_version": served,
            "arm": arm,
            "items": [{"item_id": item_ids[i], "score": float(scores[i])} for i in order],
        }

    # --- HTTP -----------------------------------------------------------------------------------
    def app(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/v1/rank" and method == "POST":
                req = _json(body)
                user_id, item_ids, request_id = self.validate(req)
                return json_body(200, self.rank(user_id, item_ids, request_id, req.get("as_of")))
            if path == "/v1/admin/canary" and method == "PUT":
                req = _json(body)
                if not isinstance(req, dict) or "weight" not in req:
                    raise GatewayError(400, 'expected {"version": int|null, "weight": 0..100}')
                return json_body(200, self.set_canary(req.get("version"), req["weight"]))
            if path == "/v1/admin/canary" and method == "GET":
                return json_body(200, self.canary())
            if path == "/v1/admin/stats" and method == "GET":
                return json_body(200, self.stats())
            if path == "/v1/admin/stats" and method == "DELETE":
                self.reset_stats()
                return json_body(200, self.stats())
            if path == "/healthz" and method == "GET":
                return json_body(200, {"status": "ok"})
            return error_body(404, f"no such endpoint: {method} {path}")
        except GatewayError as exc:
            return error_body(exc.status, exc.message)

    def start(self) -> Gateway:
        """Listen on ``serving.gateway_port`` (0 = a free port; see ``port``) and start the log flusher."""
        self.client  # noqa: B018 - import TensorFlow's protos and open the channel now, not on the first request
        self.predlog.start()
        self._http = HttpService(self.host, self.port, self.app, self.max_request_bytes, name="gateway")
        self.port = self._http.port
        self._http.start()
        log.info("gateway on %s:%d -> model server %s", self.host, self.port, self.model_target)
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests, flush the prediction log."""
        if self._http is not None:
            self._http.stop(grace_s)
            self._http = None
        self.predlog.stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_as_of(value: Any) -> int | None:
    """Nanoseconds since the epoch of an ``as_of`` field (None when absent), or GatewayError(400)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise GatewayError(400, "as_of must be an ISO-8601 time string, e.g. 1998-03-01T12:00:00Z")
    try:
        ts = pd.Timestamp(value)
    except ValueError as exc:
        raise GatewayError(400, f"as_of is not an ISO-8601 time: {value!r}") from exc
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value)


def _utc_datetime(ns: int) -> datetime:
    """A UTC datetime of nanoseconds since the epoch, to the microsecond below (as pandas' to_pydatetime)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"the request body is not valid JSON: {exc}") from exc
