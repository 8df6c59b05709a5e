"""TF Serving's REST API over the model manager (see TF Serving's ``api_rest.md``).

``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`` with ``instances`` (row format) or
``inputs`` (columnar), ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status),
``GET .../metadata`` and ``GET /monitoring/prometheus/metrics``. Errors are ``{"error": "..."}``
with TF Serving's status codes: 400 bad input or unknown label, 404 unknown model/version;
413 (too large) comes from the HTTP layer.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import numpy as np

from freshrec.serving.httpbase import JSON, error_body, json_body
from freshrec.serving.loader import DEFAULT_SIGNATURE, ModelManager, Servable, ServingError
from freshrec.serving.metrics import ServerMetrics
from freshrec.serving.protos import HTTP_STATUS, model_status, signature_def_map, to_json_dict

MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<verb>:predict|:classify|:regress)|(?P<metadata>/metadata))?$"
)
METRICS_PATH = "/monitoring/prometheus/metrics"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class RestApi:
    """The REST app: a callable ``(method, path, body) -> (status, body, content type)``."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServerMetrics,
        max_batch_size: int,
        metrics_path: str | None = METRICS_PATH,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        # None: no metrics endpoint (TF Serving without a --monitoring_config_file enabling Prometheus).
        self.metrics_path = metrics_path

    def __call__(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0]
        if path == self.metrics_path and method == "GET":
            return 200, self.render_metrics().encode(), PROMETHEUS_TEXT
        m = MODEL_PATH.match(path)
        if m is None:
            if path.rstrip("/") == "/v1/models":
                return error_body(400, "Missing model name in request.")
            return error_body(400, f"Malformed request: {method} {path}")
        name, label, verb = m["name"], m["label"], m["verb"]
        version = None
        if m["version"] is not None:
            version = int(m["version"])
            if version >= 2**63:
                return error_body(400, f"Failed to convert version: {m['version']} to numeric.")
        if (verb and method != "POST") or (not verb and method != "GET"):
            return error_body(400, f"Malformed request: {method} {path}")
        if verb in (":classify", ":regress"):
            return error_body(501, f"{verb[1:]} is not supported by this server; use :predict")
        api = "predict" if verb else ("metadata" if m["metadata"] else "status")
        start = time.perf_counter()
        served_version: object = version or ""
        try:
            if api == "predict":
                servable = self.manager.resolve(name, version, label)
                served_version = servable.version
                result = (200, self.predict(servable, body), JSON)
            elif api == "metadata":
                servable = self.manager.resolve(name, version, label)
                served_version = servable.version
                result = json_body(200, self.metadata(servable))
            else:
                result = json_body(200, to_json_dict(model_status(self.manager, name, version, label)))
            status = "OK"
        except ServingError as exc:
            status = exc.code
            result = error_body(HTTP_STATUS.get(exc.code, 500), exc.message)
        self.metrics.observe(name, served_version, api, "REST", status, time.perf_counter() - start)
        return result

    def render_metrics(self) -> str:
        views = self.manager.views()
        return self.metrics.render(
            {n: list(v.servables) for n, v in views.items()}, {n: len(v.failed) for n, v in views.items()}
        )

    def metadata(self, servable: Servable) -> dict[str, Any]:
        """TF Serving's metadata JSON: model_spec + metadata.signature_def (a SignatureDefMap)."""
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": to_json_dict(signature_def_map(servable))},
        }

    def predict(self, servable: Servable, body: bytes) -> bytes:
        """Decode a predict request (row or columnar), run it, encode as TF Serving does."""
        try:
            request = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from exc
        if request is None:
            raise ServingError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
        if not isinstance(request, dict):
            raise ServingError("INVALID_ARGUMENT", "JSON Value: the request body must be a JSON object")
        signature_name = request.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature_name, str):
            raise ServingError("INVALID_ARGUMENT", "'signature_name' key must be a string value.")
        servable.signature(signature_name)  # INVALID_ARGUMENT for an unknown signature
        specs = servable.input_specs[signature_name or DEFAULT_SIGNATURE]
        has_rows, has_cols = "instances" in request, "inputs" in request
        if has_rows and has_cols:
            raise ServingError(
                "INVALID_ARGUMENT",
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists",
            )
        if not (has_rows or has_cols):
            raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")
        if has_rows:
            columns = self._rows_to_columns(request["instances"], specs)
        else:
            columns = self._columns(request["inputs"], specs)
        inputs = {name: to_array(values, specs[name], name) for name, values in columns.items()}
        outputs = servable.predict(inputs, signature_name)
        return encode_outputs(outputs, row_format=has_rows).encode()

    def _check_batch(self, n: int) -> None:
        if n > self.max_batch_size:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"batch size {n} exceeds the server's max_batch_size {self.max_batch_size}",
            )

    def _rows_to_columns(self, instances: Any, specs: dict[str, Any]) -> dict[str, list[Any]]:
        if not isinstance(instances, list):
            raise ServingError("INVALID_ARGUMENT", "'instances' must be a list")
        if not instances:
            raise ServingError("INVALID_ARGUMENT", "'instances' is an empty list")
        self._check_batch(len(instances))
        names = list(specs)
        if isinstance(instances[0], dict) and not _is_b64(instances[0]):
            wanted = set(names)
            for i, obj in enumerate(instances):
                if not isinstance(obj, dict):
                    raise ServingError(
                        "INVALID_ARGUMENT", f"Expecting object but got {_kind(obj)} at item {i}"
                    )
                if obj.keys() != wanted:
                    missing, extra = sorted(wanted - obj.keys()), sorted(obj.keys() - wanted)
                    raise ServingError(
                        "INVALID_ARGUMENT",
                        f"Failed to process element: {i} of 'instances' list. JSON object: "
                        f"missing named inputs {missing}, unexpected {extra}; the signature takes {sorted(names)}",
                    )
            return {name: [obj[name] for obj in instances] for name in names}
        if len(names) != 1:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expecting object but got {_kind(instances[0])} at item 0 of input list: the signature has "
                f"{len(names)} named inputs {sorted(names)}; send each instance as an object",
            )
        return {names[0]: instances}

    def _columns(self, inputs: Any, specs: dict[str, Any]) -> dict[str, Any]:
        names = list(specs)
        if isinstance(inputs, dict) and not _is_b64(inputs) and (len(names) > 1 or set(inputs) == set(names)):
            if inputs.keys() != set(names):
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"'inputs' must have exactly the named inputs {sorted(names)}: missing "
                    f"{sorted(set(names) - inputs.keys())}, unexpected {sorted(inputs.keys() - set(names))}",
                )
            columns = dict(inputs)
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise ServingError(
                "INVALID_ARGUMENT", f"'inputs' must be an object with the named inputs {sorted(names)}"
            )
        for values in columns.values():
            if isinstance(values, list):
                self._check_batch(len(values))
        return columns


def _kind(x: Any) -> str:
    return {list: "list", dict: "object", str: "string"}.get(type(x), type(x).__name__)


def _is_b64(x: Any) -> bool:
    return isinstance(x, dict) and len(x) == 1 and "b64" in x


def _strings(values: Any, name: str) -> Any:
    if isinstance(values, str):
        return values.encode()
    if isinstance(values, list):
        return [_strings(v, name) for v in values]
    if _is_b64(values):
        try:
            return base64.b64decode(values["b64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: bad base64 value: {exc}") from exc
    raise ServingError("INVALID_ARGUMENT", f"input {name!r}: {values!r} is not of expected type: string")


def to_array(values: Any, spec: Any, name: str) -> np.ndarray:
    """A JSON value (nested lists) as a numpy array of the signature input's dtype.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input for wrong types or ragged lists.
    """
    dtype = spec.dtype
    if dtype.name == "string":
        if isinstance(values, list) and all(type(v) is str for v in values):
            return np.array([v.encode() for v in values], dtype=object)  # the common case, flat
        converted = _strings(values, name)
        try:
            out = np.array(converted, dtype=object)
        except ValueError as exc:
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: ragged lists: {exc}") from exc
        if out.dtype == object and any(isinstance(x, list) for x in out.ravel()):
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: ragged lists are not supported")
        return out
    try:
        arr = np.asarray(values)
    except ValueError as exc:
        raise ServingError("INVALID_ARGUMENT", f"input {name!r}: ragged lists: {exc}") from exc
    kind = arr.dtype.kind
    np_dtype = np.dtype(dtype.as_numpy_dtype)
    ok = kind in "biu" or (kind == "f" and np_dtype.kind in "fc") or (kind == "b" and np_dtype.kind == "b")
    if not ok or (np_dtype.kind == "b" and kind != "b"):
        raise ServingError(
            "INVALID_ARGUMENT", f"input {name!r}: JSON value is not of expected type: {dtype.name}"
        )
    return arr.astype(np_dtype, copy=False)


def _to_py(arr: np.ndarray, name: str) -> Any:
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 8:
        return arr.astype(str).astype(np.float64).tolist()  # shortest float32 text: 0.3, not 0.30000001
    if arr.dtype == object:
        binary = name.endswith("_bytes")  # TF Serving's convention for binary string outputs
        return _decode(arr.tolist(), binary)
    return arr.tolist()


def _decode(x: Any, binary: bool) -> Any:
    if isinstance(x, list):
        return [_decode(v, binary) for v in x]
    if isinstance(x, bytes):
        if binary:
            return {"b64": base64.b64encode(x).decode()}
        return x.decode("utf-8", "replace")
    return x


def encode_outputs(outputs: dict[str, np.ndarray], row_format: bool) -> str:
    """TF Serving's predict response: ``predictions`` (rows) or ``outputs`` (columns); a single named
    output loses its name, several become objects."""
    if row_format:
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
        if None in sizes.values() or len(set(sizes.values())) > 1:
            raise ServingError(
                "INVALID_ARGUMENT", f"Output tensors have different or no batch dimension: {sizes}"
            )
        if len(outputs) == 1:
            ((name, arr),) = outputs.items()
            return json.dumps({"predictions": _to_py(arr, name)})
        cols = {k: _to_py(v, k) for k, v in outputs.items()}
        n = next(iter(sizes.values()))
        return json.dumps({"predictions": [{k: cols[k][i] for k in cols} for i in range(n)]})
    if len(outputs) == 1:
        ((name, arr),) = outputs.items()
        return json.dumps({"outputs": _to_py(arr, name)})
    return json.dumps({"outputs": {k: _to_py(v, k) for k, v in outputs.items()}})
