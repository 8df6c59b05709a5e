"""TF Serving's gRPC API: ``PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus), on the servicer base classes of ``tensorflow-serving-api``.

Classify, Regress, MultiInference and HandleReloadConfigRequest stay UNIMPLEMENTED (the base
classes' answer): freshrec models have predict signatures only and the config is polled from disk.
"""

from __future__ import annotations

import time
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from freshrec.serving.loader import DEFAULT_SIGNATURE, ModelManager, ServingError
from freshrec.serving.metrics import ServerMetrics
from freshrec.serving.protos import model_metadata, model_status


def _version_choice(spec: Any) -> tuple[int | None, str | None]:
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return spec.version.value, None
    if which == "version_label":
        return None, spec.version_label
    return None, None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics, max_batch_size: int) -> None:
        self.manager = manager
        self.metrics = metrics
        self.max_batch_size = max_batch_size

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        import tensorflow as tf

        start = time.perf_counter()
        spec = request.model_spec
        version, label = _version_choice(spec)
        served: object = version or ""
        try:
            servable = self.manager.resolve(spec.name, version, label)
            served = servable.version
            signature = spec.signature_name or DEFAULT_SIGNATURE
            servable.signature(signature)
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
            wanted = list(request.output_filter) or list(outputs)
            unknown = [k for k in wanted if k not in outputs]
            if unknown:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"output_filter names {unknown} not in the signature's outputs {sorted(outputs)}",
                )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature
            for key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        except ServingError as exc:
            self.metrics.observe(spec.name, served, "predict", "GRPC", exc.code, time.perf_counter() - start)
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)
        self.metrics.observe(spec.name, served, "predict", "GRPC", "OK", time.perf_counter() - start)
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        spec = request.model_spec
        version, label = _version_choice(spec)
        served: object = version or ""
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise ServingError(
                    "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"
                )
            unsupported = [f for f in fields if f != "signature_def"]
            if unsupported:
                raise ServingError("INVALID_ARGUMENT", f"Metadata field {unsupported[0]} is not supported")
            servable = self.manager.resolve(spec.name, version, label)
            served = servable.version
            response = model_metadata(servable)
        except ServingError as exc:
            self.metrics.observe(spec.name, served, "metadata", "GRPC", exc.code, time.perf_counter() - start)
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)
        self.metrics.observe(spec.name, served, "metadata", "GRPC", "OK", time.perf_counter() - start)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        spec = request.model_spec
        version, label = _version_choice(spec)
        try:
            response = model_status(self.manager, spec.name, version, label)
        except ServingError as exc:
            self.metrics.observe(
                spec.name, version or "", "status", "GRPC", exc.code, time.perf_counter() - start
            )
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)
        self.metrics.observe(spec.name, version or "", "status", "GRPC", "OK", time.perf_counter() - start)
        return response


def make_grpc_server(
    manager: ModelManager,
    metrics: ServerMetrics,
    address: str,
    max_request_bytes: int,
    max_batch_size: int,
    workers: int = 16,
) -> tuple[grpc.Server, int]:
    """A gRPC server with both services bound to ``address`` ("host:port", port 0 = free); returns (server, port).

    Messages over ``max_request_bytes`` are refused by gRPC itself with RESOURCE_EXHAUSTED.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
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
