"""The ranking gateway: features from the online store, scores from the model server, ranked items.

Served by starlette on uvicorn (:mod:`freshrec.serving.asgi`), on two listeners:

**Ranking** (``serving.host:serving.gateway_port``, the one users reach):
``POST /v1/rank`` ``{"user_id": str, "item_ids": [str], "request_id"?: str, "as_of"?: str}`` →
``{"request_id", "model_version", "arm", "items": [{"item_id", "score"}, ...]}`` sorted by score
(highest first); ``GET /healthz``; ``GET /metrics`` (Prometheus text: requests per arm and status,
latency per arm). The gateway calls the model server over gRPC ``Predict`` — the production topology —
asking for the ``stable`` label (the latest version when the server has no such label) or, for the
canary arm, the canary's version number. ``as_of`` (an ISO-8601 time) is accepted only in replay mode
(``serving.gateway_replay``): it is the impression's event time, logged as ``served_at``, so that a
replay of historical traffic joins with its historical clicks.

**Admin** (``serving.gateway_admin_host:serving.gateway_admin_port``, loopback by default; a bearer
token from ``serving.admin_token_env``/``admin_token_file`` when set, and required off loopback):
``PUT /v1/admin/canary {"version": int|null, "weight": 0..100}``, ``GET /v1/admin/canary``,
``GET /v1/admin/stats`` → ``{"stable": {...}, "canary": {...}}`` with, per arm, ``requests``,
``errors``, ``error_rate``, ``latency_p50_ms``, ``latency_p99_ms`` (over the last 10 000 requests),
``score_mean``, ``model_version`` (last served); ``DELETE /v1/admin/stats`` resets them.

Traffic split: a user is in the canary arm when ``crc32(user_id) % 100 < weight``, so the split is
sticky per user and raising the weight only moves stable users to the canary, never back.
Every ranked item is logged (:mod:`freshrec.serving.predlog`). Ids are bounded (``serving.max_id_length``,
no control characters; ``request_id`` 1-128 printable ASCII characters) before anything reaches the log.

The blocking work of a request (feature lookup, gRPC Predict) runs in one hop to a pool of
``serving.gateway_threads`` threads; parsing, validation and the response stay on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from freshrec.config import Settings
from freshrec.io import atomic_write_json
from freshrec.serving.httpbase import BadJson, parse_json
from freshrec.serving.predlog import PredictionLog

log = logging.getLogger(__name__)

# lookup(user_id, item_ids, as_of=<request time, UTC datetime>) -> one feature row per item, as a
# DataFrame or a mapping of column name -> array (what OnlineFeatures.lookup_columns returns)
FeatureLookup = Callable[..., Any]
ARMS = ("stable", "canary")
CANARY_STATE_FILE = "gateway_canary.json"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JSON_TYPE = "application/json"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
# how far past the wall clock a replayed as_of may be (clock skew between the replayer and the gateway)
AS_OF_FUTURE_SLACK = timedelta(days=1)
# ``explain: true``: the top-ranked items explained, and the features shown per item (bounded cost).
EXPLAIN_ITEMS, EXPLAIN_FEATURES = 5, 5


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
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=window)
        self.score_sum = 0.0
        self.score_n = 0
        self.model_version: int | None = None

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.errors = 0
            self.latencies = deque(maxlen=self.window)
            self.score_sum = 0.0
            self.score_n = 0
            self.model_version = None

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

    def predict(
        self, columns: Mapping[str, np.ndarray], n: int, version: int | None, label: str | None
    ) -> tuple[int, np.ndarray]:
        """Scores (click probabilities) for ``n`` rows of feature columns from the target version/label.

        Returns:
            (served version, scores of shape [n]).
        """
        import grpc

        if label == "stable" and time.monotonic() < self._no_stable_label_until:
            label = None
        try:
            return self._predict(columns, n, version, label, refresh=False)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label" in (
                exc.details() or ""
            ):
                # no stable label yet (first model, no rollout): the latest version is the stable one
                self._no_stable_label_until = time.monotonic() + 2.0
                return self._predict(columns, n, None, None, refresh=False)
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                return self._predict(
                    columns, n, version, label, refresh=True
                )  # the signature may have changed
            raise

    def _predict(
        self, columns: Mapping[str, np.ndarray], n: int, version: int | None, label: str | None, refresh: bool
    ) -> tuple[int, np.ndarray]:
        from tensorflow_serving.apis import predict_pb2

        inputs = self.signature_inputs(version, label, refresh=refresh)
        request = predict_pb2.PredictRequest()
        self._spec(request, version, label)
        for name, (dtype, rank) in inputs.items():
            if name not in columns:
                raise GatewayError(
                    502, f"the model needs input {name!r}, which the feature lookup did not return"
                )
            encode_column(request.inputs[name], columns[name], dtype, rank, n)
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


def encode_column(proto: Any, values: Any, dtype: int, rank: int, n: int) -> None:
    """Fill a TensorProto with a feature column, shaped [n] or [n, 1] as the signature wants."""
    proto.dtype = dtype
    proto.tensor_shape.dim.add().size = n
    if rank >= 2:
        proto.tensor_shape.dim.add().size = 1
    if dtype == DT_STRING:
        items = values.tolist() if hasattr(values, "tolist") else list(values)
        if set(map(type, items)) <= {str}:  # the common case, encoded in C
            proto.string_val.extend(list(map(str.encode, items)))
        else:
            proto.string_val.extend([s.encode() if type(s) is str else str(s).encode() for s in items])
    elif dtype in _NUMPY:
        arr = np.asarray(values)
        if dtype in (DT_INT32, DT_INT64) and arr.dtype.kind == "f":
            arr = np.nan_to_num(arr)
        proto.tensor_content = np.ascontiguousarray(arr, dtype=_NUMPY[dtype]).tobytes()
    else:
        raise GatewayError(502, f"unsupported model input dtype enum {dtype}")


def decode_tensor(proto: Any) -> np.ndarray:
    if proto.dtype == DT_FLOAT and proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.float32)
    if proto.dtype == DT_FLOAT and proto.float_val:
        return np.asarray(proto.float_val, dtype=np.float32)
    import tensorflow as tf

    return tf.make_ndarray(proto)


@dataclass(frozen=True)
class RankRequest:
    """A validated ``/v1/rank`` body."""

    user_id: str
    item_ids: list[str]
    request_id: str
    as_of_ns: int | None = None  # replay mode only
    explain: bool = False  # add the top contributing features of the top-ranked items


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gateway:
    """The ranking gateway (``freshrec serving gateway``); ``start`` serves both listeners in-process."""

    def __init__(
        self,
        settings: Settings,
        *,
        lookup: FeatureLookup | None = None,
        model_target: str | None = None,
        model_name: str | None = None,
        port: int | None = None,
        admin_port: int | None = None,
        predictions_dir: Path | None = None,
        max_items: int | None = None,
        replay: bool | None = None,
    ) -> None:
        cfg = settings.serving
        self.settings = settings
        self.host = cfg.host
        self.port = cfg.gateway_port if port is None else port
        self.admin_host = cfg.gateway_admin_host
        if admin_port is None:  # port 0 (free ports, in tests) frees the admin port too
            admin_port = 0 if self.port == 0 else cfg.gateway_admin_port
        self.admin_port = admin_port
        self.model_target = model_target or f"{cfg.host}:{cfg.grpc_port}"
        self.model_name = model_name or settings.model.name
        self.max_items = max_items or cfg.max_batch_size
        self.max_id_length = cfg.max_id_length
        self.replay = cfg.gateway_replay if replay is None else replay
        self.as_of_earliest_ns = parse_as_of(cfg.as_of_earliest)
        self._lookup = lookup
        self.predlog = PredictionLog(Path(predictions_dir or settings.predictions_dir))
        self.stats_by_arm = {arm: ArmStats() for arm in ARMS}
        self._state_path = settings.state_dir / CANARY_STATE_FILE
        self._canary_version: int | None = None
        self._canary_weight = 0
        self._load_canary()
        self._client: ModelClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._service: Any = None
        self._token: str | None = None
        self.metrics = _GatewayMetrics()

    # --- canary ---------------------------------------------------------------------------------
    def _load_canary(self) -> None:
        try:
            state = json.loads(self._state_path.read_text())
            version, weight = state.get("version"), int(state.get("weight", 0))
            self._check_canary(version, weight)
            self._canary_version, self._canary_weight = version, weight
        except (OSError, ValueError, TypeError, AttributeError, GatewayError):
            pass

    def canary(self) -> dict[str, Any]:
        return {"version": self._canary_version, "weight": self._canary_weight}

    @staticmethod
    def _check_canary(version: Any, weight: Any) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
            raise GatewayError(400, f"weight must be a number in 0..100, got {weight!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise GatewayError(400, f"version must be a positive integer or null, got {version!r}")
        if version is None and weight > 0:
            raise GatewayError(400, "a canary weight > 0 needs a version")

    def set_canary(self, version: int | None, weight: int) -> dict[str, Any]:
        """Route ``weight``% of users (sticky) to model ``version``; ``version=None`` turns the canary off.

        Raises:
            GatewayError: 400 for a weight outside 0..100, a non-integer version, or weight > 0 without a version.
        """
        self._check_canary(version, weight)
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

            self._lookup = OnlineFeatures(self.settings).lookup_columns
        return self._lookup

    def _check_id(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise GatewayError(400, f"{field} must be a non-empty string, got {_brief(value)}")
        if len(value) > self.max_id_length:
            raise GatewayError(
                400, f"{field} is {len(value)} characters long; max_id_length={self.max_id_length}"
            )
        if _CONTROL.search(value):
            raise GatewayError(400, f"{field} contains control characters")
        return value

    def validate(self, body: Any) -> RankRequest:
        """The :class:`RankRequest` of a ``/v1/rank`` body, or GatewayError(400) naming the bad field."""
        if not isinstance(body, dict):
            raise GatewayError(400, "the request body must be a JSON object with user_id and item_ids")
        if "user_id" not in body:
            raise GatewayError(400, "missing user_id (a non-empty string)")
        user_id = self._check_id("user_id", body["user_id"])
        item_ids = body.get("item_ids")
        if not isinstance(item_ids, list):
            raise GatewayError(400, "missing item_ids (a list of item id strings)")
        if not item_ids:
            raise GatewayError(400, "item_ids is empty: nothing to rank")
        if len(item_ids) > self.max_items:
            raise GatewayError(400, f"too many items: {len(item_ids)} > {self.max_items}")
        if not all(type(x) is str and x for x in item_ids):
            bad = next(i for i, x in enumerate(item_ids) if type(x) is not str or not x)
            raise GatewayError(400, f"item_ids[{bad}] is not a non-empty string: {_brief(item_ids[bad])}")
        longest = max(map(len, item_ids))
        if longest > self.max_id_length:
            raise GatewayError(
                400, f"an item id is {longest} characters long; max_id_length={self.max_id_length}"
            )
        if _CONTROL.search("".join(item_ids)):
            raise GatewayError(400, "item_ids contain control characters")
        request_id = body.get("request_id")
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise GatewayError(
                400, "request_id must be a string of 1-128 printable ASCII characters, no spaces"
            )
        as_of = body.get("as_of")
        as_of_ns = None
        if as_of is not None:
            if not self.replay:
                raise GatewayError(
                    400, "as_of is accepted only in replay mode (serving.gateway_replay / --replay)"
                )
            latest = datetime.now(UTC) + AS_OF_FUTURE_SLACK
            as_of_ns = parse_as_of(as_of, earliest_ns=self.as_of_earliest_ns, latest_ns=_ns(latest))
        explain = body.get("explain", False)
        if not isinstance(explain, bool):
            raise GatewayError(400, f"explain must be true or false, got {_brief(explain)}")
        return RankRequest(user_id, item_ids, request_id, as_of_ns, explain)

    def rank(self, req: RankRequest) -> dict[str, Any]:
        """Rank a validated request (blocking); logs the predictions and counts the arm's stats.

        Raises:
            GatewayError: 502 when the feature store or the model server fails, or answers nonsense.
        """
        import grpc

        start = time.perf_counter()
        version, weight = self._canary_version, self._canary_weight
        arm = arm_for(req.user_id, weight) if version is not None else "stable"
        stats = self.stats_by_arm[arm]
        item_ids = req.item_ids
        n = len(item_ids)
        try:
            try:
                # Features as of the request time (``as_of`` or now): time-since-last features are aged to
                # it, as the offline training set computes them at each event's time.
                now_ns = req.as_of_ns if req.as_of_ns is not None else time.time_ns()
                found = self.lookup(req.user_id, item_ids, as_of=_utc_datetime(now_ns))
                columns = _columns(found)
            except GatewayError:
                raise
            except Exception as exc:  # the store's own errors vary by backend; the log has them
                raise GatewayError(502, f"feature lookup failed ({_logged(exc, 'feature lookup')})") from exc
            got = len(next(iter(columns.values()))) if columns else 0
            if got != n:
                raise GatewayError(502, f"feature lookup returned {got} rows for {n} items")
            if "user_id" not in columns:
                columns["user_id"] = np.full(n, req.user_id, dtype=object)
            if "item_id" not in columns:
                columns["item_id"] = np.asarray(item_ids, dtype=object)
            elif (
                _as_list(columns["item_id"]) != item_ids and [str(i) for i in columns["item_id"]] != item_ids
            ):
                raise GatewayError(502, "feature lookup returned the items in another order than asked")
            try:
                if arm == "canary":
                    served, scores = self.client.predict(columns, n, version, None)
                else:
                    served, scores = self.client.predict(columns, n, None, "stable")
            except grpc.RpcError as exc:
                details = (exc.details() or "")[:300]
                raise GatewayError(502, f"model server: {exc.code().name}: {details}") from exc
            if len(scores) != n or not np.isfinite(scores).all():
                raise GatewayError(
                    502, f"the model server answered {len(scores)} scores, not {n} finite ones"
                )
            order = np.argsort(-scores, kind="stable").tolist()
            why = self._explain(columns, order, scores, served) if req.explain else []
        except GatewayError:
            stats.record(time.perf_counter() - start, None, None)
            raise
        self.predlog.add(req.request_id, req.user_id, item_ids, served, arm, scores, req.as_of_ns)
        stats.record(time.perf_counter() - start, scores, served)
        ranked = scores.tolist()
        items = [{"item_id": item_ids[i], "score": ranked[i]} for i in order]
        for item, features in zip(items, why, strict=False):  # the top EXPLAIN_ITEMS only
            item["explanation"] = features
        return {"request_id": req.request_id, "model_version": served, "arm": arm, "items": items}

    def _explain(
        self, columns: dict[str, np.ndarray], order: list[int], scores: np.ndarray, served: int
    ) -> list[list[dict[str, Any]]]:
        """Occlusion (:func:`freshrec.model.explain.occlusion`) of the top EXPLAIN_ITEMS items on the version
        that scored them: one extra predict of at most EXPLAIN_ITEMS x inputs rows."""
        import grpc

        from freshrec.model.explain import occlusion

        rows = order[:EXPLAIN_ITEMS]
        try:
            features = list(self.client.signature_inputs(served, None))
            return occlusion(
                lambda cols, n: self.client.predict(cols, n, served, None)[1],
                columns,
                rows,
                features,
                scores=scores,
                top=EXPLAIN_FEATURES,
            )
        except grpc.RpcError as exc:
            raise GatewayError(502, f"model server (explain): {exc.code().name}") from exc

    # --- HTTP -----------------------------------------------------------------------------------
    def _apps(self) -> tuple[Any, Any]:
        import msgspec
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        encode = msgspec.json.Encoder().encode  # ~10x json.dumps on a 100-item answer (floats)

        def reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
            return Response(json.dumps(obj).encode(), status, headers=headers, media_type=JSON_TYPE)

        def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
            return reply(status, {"error": message}, headers)

        async def on_http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            path = request.url.path
            if exc.status_code == 404 and path.startswith("/v1/admin"):
                return error(
                    404,
                    f"no such endpoint: {path}; the admin API has its own listener "
                    "(serving.gateway_admin_port)",
                )
            return error(exc.status_code, f"{exc.detail}: {request.method} {path}")

        async def on_bug(request: Request, exc: Exception) -> Response:
            return error(500, f"internal error ({_logged(exc, request.url.path)})")

        handlers = {HTTPException: on_http_error, Exception: on_bug}

        async def rank(request: Request) -> Response:
            start = time.perf_counter()
            arm = "none"
            try:
                req = self.validate(_json(await request.body()))
                arm = (
                    arm_for(req.user_id, self._canary_weight)
                    if self._canary_version is not None
                    else "stable"
                )
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(self._pool, self.rank, req)
                response = Response(encode(out), media_type=JSON_TYPE)
            except GatewayError as exc:
                response = error(exc.status, exc.message)
            except Exception as exc:  # a bug: logged with an id, the client sees only the id
                response = error(500, f"internal error ({_logged(exc, '/v1/rank')})")
            self.metrics.observe(arm, response.status_code, time.perf_counter() - start)
            return response

        async def healthz(request: Request) -> Response:
            return reply(200, {"status": "ok"})

        async def metrics(request: Request) -> Response:
            text, ctype = self.metrics.render()
            return Response(text, media_type=ctype)

        def admin(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                if self._token is not None:
                    sent = request.headers.get("authorization", "")
                    if not hmac.compare_digest(sent.encode(), f"Bearer {self._token}".encode()):
                        return error(
                            401,
                            "the admin API needs 'Authorization: Bearer <token>'",
                            {"WWW-Authenticate": 'Bearer realm="freshrec-gateway-admin"'},
                        )
                try:
                    return reply(200, await fn(request))
                except GatewayError as exc:
                    return error(exc.status, exc.message)

            return endpoint

        async def put_canary(request: Request) -> Any:
            body = _json(await request.body())
            if not isinstance(body, dict) or "weight" not in body:
                raise GatewayError(400, 'expected {"version": int|null, "weight": 0..100}')
            return self.set_canary(body.get("version"), body["weight"])

        async def get_canary(request: Request) -> Any:
            return self.canary()

        async def get_stats(request: Request) -> Any:
            return self.stats()

        async def delete_stats(request: Request) -> Any:
            self.reset_stats()
            return self.stats()

        ranking = Starlette(
            routes=[
                Route("/v1/rank", rank, methods=["POST"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
            ],
            exception_handlers=handlers,
        )
        admin_app = Starlette(
            routes=[
                Route("/v1/admin/canary", admin(put_canary), methods=["PUT"]),
                Route("/v1/admin/canary", admin(get_canary), methods=["GET"]),
                Route("/v1/admin/stats", admin(get_stats), methods=["GET"]),
                Route("/v1/admin/stats", admin(delete_stats), methods=["DELETE"]),
                Route("/healthz", healthz, methods=["GET"]),
            ],
            exception_handlers=handlers,
        )
        return ranking, admin_app

    def start(self) -> Gateway:
        """Listen on the ranking and admin ports (0 = a free port; see ``port``/``admin_port``).

        Raises:
            ValueError: the admin listener is not on loopback and no admin token is configured.
            OSError: a port cannot be bound.
        """
        from freshrec.serving.asgi import AsgiService, Limits, Listener

        self._token = self.settings.serving.admin_token()
        if self._token is None and not _is_loopback(self.admin_host):
            raise ValueError(
                f"the gateway's admin API would listen on {self.admin_host} without a token: set "
                f"${self.settings.serving.admin_token_env} or serving.admin_token_file, or keep "
                "serving.gateway_admin_host on loopback"
            )
        self.client  # noqa: B018 - import TensorFlow's protos and open the channel now, not on the first request
        self.predlog.start()
        self._pool = ThreadPoolExecutor(self.settings.serving.gateway_threads, thread_name_prefix="gateway")
        limits = Limits.from_settings(self.settings.serving)
        ranking, admin_app = self._apps()
        self._service = AsgiService(
            [
                Listener("rank", ranking, self.host, self.port, limits),
                Listener("admin", admin_app, self.admin_host, self.admin_port, limits),
            ],
            name="gateway",
        )
        try:
            self._service.start()
        except BaseException:
            self._service = None
            self.stop(0)
            raise
        self.port = self._service.listeners[0].port
        self.admin_port = self._service.listeners[1].port
        log.info("gateway on %s (admin %s) -> model server %s", self.url, self.admin_url, self.model_target)
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests, flush the prediction log."""
        if self._service is not None:
            self._service.stop(grace_s)
            self._service = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
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

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_host}:{self.admin_port}"

    @property
    def admin_token_required(self) -> bool:
        return self._token is not None


class _GatewayMetrics:
    """Prometheus metrics of the gateway: labels are the arm and the status code only (bounded)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "freshrec_gateway_requests",
            "Rank requests by arm (none: refused before an arm was chosen) and HTTP status.",
            ["arm", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "freshrec_gateway_request_duration_seconds",
            "Rank request latency in the gateway, by arm.",
            ["arm"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )

    def observe(self, arm: str, status: int, seconds: float) -> None:
        self.requests.labels(arm, str(status)).inc()
        self.latency.labels(arm).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _columns(found: Any) -> dict[str, np.ndarray]:
    """A lookup's answer (DataFrame or mapping of columns) as a mutable dict of arrays."""
    if isinstance(found, pd.DataFrame):
        return {str(c): found[c].to_numpy() for c in found.columns}
    return dict(found)


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _ns(ts: datetime) -> int:
    return int(pd.Timestamp(ts).as_unit("ns").value)


def parse_as_of(value: Any, earliest_ns: int | None = None, latest_ns: int | None = None) -> int | None:
    """Nanoseconds since the epoch of an ``as_of`` field (None when absent), or GatewayError(400).

    A naive time is UTC. With bounds, a time before ``earliest_ns`` or after ``latest_ns`` is refused.
    """
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise GatewayError(400, "as_of must be an ISO-8601 time string, e.g. 1998-03-01T12:00:00Z")
    try:
        ts = pd.Timestamp(value)
        if pd.isna(ts):
            raise ValueError("empty")
        if ts.tzinfo is None:
            ts = ts.tz_localize("UTC")
        ns = int(ts.as_unit("ns").value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise GatewayError(400, f"as_of is not an ISO-8601 time in 1677..2262: {value!r}") from exc
    if earliest_ns is not None and ns < earliest_ns:
        raise GatewayError(400, f"as_of {value!r} is before serving.as_of_earliest")
    if latest_ns is not None and ns > latest_ns:
        raise GatewayError(400, f"as_of {value!r} is in the future")
    return ns


def _utc_datetime(ns: int) -> datetime:
    """A UTC datetime of nanoseconds since the epoch, to the microsecond below (as pandas' to_pydatetime)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def _json(body: bytes) -> Any:
    try:
        return parse_json(body)
    except BadJson as exc:
        raise GatewayError(400, f"the request body is not valid JSON: {exc}") from exc


def _brief(value: Any) -> str:
    """A short description of a bad value for an error message (never the value in full)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__} of {len(text)} characters"


def _logged(exc: BaseException, where: str) -> str:
    """Log an unexpected error with an id; returns the words a client gets instead of its text."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s in %s: %s: %s", error_id, where, type(exc).__name__, exc, exc_info=exc)
    return f"error id {error_id}; the gateway log has the details"
