"""TF Serving's gRPC API: ``PredictionService`` (Predict, GetModelMetadata, Classify, Regress) and
``ModelService`` (GetModelStatus), on the servicer base classes of ``tensorflow-serving-api``.

Status codes follow tensorflow/serving's sources: an unknown ``signature_name`` in Predict is
FAILED_PRECONDITION "Serving signature key ... not found." and the ``output_filter`` is checked before
the model runs — an alias not in the signature, or one given twice, is INVALID_ARGUMENT
(``servables/tensorflow/predict_util.cc``: RunPredict, PreProcessPrediction). Classify/Regress on a
signature of another kind (every Keras export is a predict signature) is INVALID_ARGUMENT
"Expected classification signature method_name to be ..." (``classifier.cc``, ``regressor.cc``); a real
classify/regress signature gets UNIMPLEMENTED (not run here). MultiInference and
HandleReloadConfigRequest stay UNIMPLEMENTED (the base classes' answer): the config is polled from disk.
An unexpected error answers INTERNAL with an error id (the log has the details), never its own text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from freshrec.serving.httpbase import internal_error
from freshrec.serving.loader import DEFAULT_SIGNATURE, ModelManager, Servable, ServingError
from freshrec.serving.metrics import ServerMetrics, model_label
from freshrec.serving.protos import model_metadata, model_status


def _version_choice(spec: Any) -> tuple[int | None, str | None]:
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return spec.version.value, None
    if which == "version_label":
        return None, spec.version_label
    return None, None


class _Call:
    """One RPC's bookkeeping: the served version (for the metrics label) and its outcome."""

    def __init__(self) -> None:
        self.served: object = ""  # only a served version is a metrics label (bounded)


def _serve(
    manager: ModelManager,
    metrics: ServerMetrics,
    api: str,
    spec: Any,
    context: grpc.ServicerContext,
    work: Callable[[_Call], Any],
) -> Any:
    """Run ``work``, count it under bounded labels, and turn errors into gRPC status codes."""
    start = time.perf_counter()
    call = _Call()
    code, message = "OK", ""
    try:
        response = work(call)
    except ServingError as exc:
        code, message = exc.code, exc.message
    except Exception as exc:  # a bug: INTERNAL with an id, not the exception's text
        code, message = "INTERNAL", internal_error(exc, f"gRPC {api}")
    metrics.observe(
        model_label(manager, spec.name), call.served, api, "GRPC", code, time.perf_counter() - start
    )
    if code != "OK":
        context.abort(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), message)
    return response


def _check_output_filter(servable: Servable, signature: str, output_filter: Any) -> list[str]:
    """The output aliases to return, checked as PreProcessPrediction does (before the model runs)."""
    defs = servable.signature_defs
    known = sorted(defs[signature].outputs) if signature in defs else None
    seen: list[str] = []
    for alias in output_filter:
        if known is not None and alias not in known:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(known)}}}.",
            )
        if alias in seen:
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, GetModelMetadata, Classify and Regress."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, max_batch_size: int) -> None:
        self.manager = manager
        self.metrics = metrics
        self.max_batch_size = max_batch_size

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _serve(
            self.manager,
            self.metrics,
            "predict",
            request.model_spec,
            context,
            lambda c: self._predict(request, c),
        )

    def _predict(self, request: Any, call: _Call) -> Any:
        import tensorflow as tf

        spec = request.model_spec
        version, label = _version_choice(spec)
        servable = self.manager.resolve(spec.name, version, label)
        call.served = servable.version
        signature = spec.signature_name or DEFAULT_SIGNATURE
        if signature not in servable.signatures:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.')
        wanted = _check_output_filter(servable, signature, request.output_filter)
        inputs = {}
        for name, proto in request.inputs.items():
            try:
                inputs[name] = tf.make_ndarray(proto)
            except (TypeError, ValueError) as exc:
                raise ServingError("INVALID_ARGUMENT", f"input {name!r}: bad TensorProto: {exc}") from exc
            if inputs[name].ndim and inputs[name].shape[0] > self.max_batch_size:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"batch size {inputs[name].shape[0]} exceeds the server's max_batch_size "
                    f"{self.max_batch_size}",
                )
        outputs = servable.predict(inputs, signature)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for key in wanted or list(outputs):
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work(call: _Call) -> Any:
            spec = request.model_spec
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(
                    "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"
                )
            unsupported = [f for f in fields if f != "signature_def"]
            if unsupported:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Metadata field {unsupported[0][:100]} is not supported"
                )
            servable = self.manager.resolve(spec.name, *_version_choice(spec))
            call.served = servable.version
            return model_metadata(servable)

        return _serve(self.manager, self.metrics, "metadata", request.model_spec, context, work)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _serve(
            self.manager,
            self.metrics,
            "classify",
            request.model_spec,
            context,
            lambda c: self._kind(request, "classify", c),
        )

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _serve(
            self.manager,
            self.metrics,
            "regress",
            request.model_spec,
            context,
            lambda c: self._kind(request, "regress", c),
        )

    def _kind(self, request: Any, api: str, call: _Call) -> Any:
        from freshrec.serving.rest import signature_method

        spec = request.model_spec
        servable = self.manager.resolve(spec.name, *_version_choice(spec))
        call.served = servable.version
        wanted = f"tensorflow/serving/{api}"
        method_name = signature_method(servable, spec.signature_name or DEFAULT_SIGNATURE)
        if method_name != wanted:
            kind = "classification" if api == "classify" else "regression"
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expected {kind} signature method_name to be {wanted}. Was: {method_name}",
            )
        raise ServingError("UNIMPLEMENTED", f"{api} signatures are not run by this server; use Predict")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work(call: _Call) -> Any:
            spec = request.model_spec
            version, label = _version_choice(spec)
            response = model_status(self.manager, spec.name, version, label)
            if version is not None:
                call.served = version  # found: model_status raised NOT_FOUND otherwise
            return response

        return _serve(self.manager, self.metrics, "status", request.model_spec, context, work)


def make_grpc_server(
    manager: ModelManager,
    metrics: ServerMetrics,
    address: str,
    max_request_bytes: int,
    max_batch_size: int,
    workers: int = 16,
    max_concurrent_rpcs: int | None = None,
) -> tuple[grpc.Server, int]:
    """A gRPC server with both services bound to ``address`` ("host:port", port 0 = free); returns (server, port).

    Messages over ``max_request_bytes`` are refused by gRPC itself with RESOURCE_EXHAUSTED, and so are
    RPCs beyond ``max_concurrent_rpcs`` in progress (queued ones included).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, metrics, max_batch_size), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager, metrics), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the gRPC server to {address}")
    return server, port
