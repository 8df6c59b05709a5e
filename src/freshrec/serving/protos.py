"""TF Serving response protos built from the model manager, shared by the REST and gRPC front ends."""

from __future__ import annotations

from typing import Any

from freshrec.serving.loader import ModelManager, Servable, ServingError

# TF Serving's HTTP mapping of status codes (http_rest_api_handler / net_http status).
HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def model_status(
    manager: ModelManager, name: str, version: int | None = None, label: str | None = None
) -> Any:
    """A ``GetModelStatusResponse`` for a model, one version or one label (TF Serving's semantics).

    Raises:
        ServingError: NOT_FOUND for an unknown model/version, INVALID_ARGUMENT for an unknown label.
    """
    from tensorflow_serving.apis import get_model_status_pb2

    views = manager.views()
    view = views.get(name)
    if label:
        if view is None or label not in view.labels:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        version = view.labels[label]
    if view is None or not (view.servables or view.failed):
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
    states = {v: ("AVAILABLE", "") for v in view.servables}
    states.update({v: ("END", msg) for v, msg in view.failed.items() if v not in states})
    if version is not None:
        if version not in states:
            raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
        states = {version: states[version]}
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in sorted(states, reverse=True):
        state, message = states[v]
        entry = response.model_version_status.add()
        entry.version = v
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        entry.status.error_code = 0 if state == "AVAILABLE" else 2  # tensorflow.error.Code OK / UNKNOWN
        entry.status.error_message = message
    return response


def signature_def_map(servable: Servable) -> Any:
    """The servable's signatures as TF Serving's ``SignatureDefMap``."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sig_map.signature_def[key].CopyFrom(sig)
    return sig_map


def model_metadata(servable: Servable) -> Any:
    """A ``GetModelMetadataResponse`` with the ``signature_def`` metadata field."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata["signature_def"].Pack(signature_def_map(servable))
    return response


def to_json_dict(message: Any) -> dict[str, Any]:
    """A proto as TF Serving's REST API prints it (proto field names, default values included)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
