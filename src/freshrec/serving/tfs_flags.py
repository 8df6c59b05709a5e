"""``tensorflow_model_server``'s command-line flags, parsed as the binary parses them.

``freshrec serve --port=8500 --rest_api_port=8501 --model_config_file=...`` runs the local server with the
args of the cluster's TF Serving container unchanged (the cluster rehearsal executes the rendered Rollout
this way). Flag names, types, defaults and meanings are those of ``tensorflow_serving/model_servers/
main.cc`` and ``server.h`` (TF Serving 2.21), and the syntax is TensorFlow's ``command_line_flags``:
``--name=value`` only; a bool also as ``--name``; anything else for a bool, or a non-number for an int, is
"Couldn't interpret value" and the server does not start.

Three groups:

- implemented with the binary's meaning (:data:`IMPLEMENTED`);
- tuning knobs that do not change what is served (thread counts, retries, cache flushing): accepted and
  reported as ignored (:data:`IGNORED`);
- everything else the binary knows (TLS, TFLite, platform configs, ...): refused with a message, rather
  than silently serving something other than what the flag asks for.

A flag the binary does not know is refused too: the binary itself only prints ``unknown argument`` and
starts anyway, which hides a typo in a manifest; here it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

# name -> (type, default) as in main.cc / server.h
IMPLEMENTED: dict[str, tuple[type, object]] = {
    "port": (int, 8500),
    "rest_api_port": (int, 0),
    "model_config_file": (str, ""),
    "model_config_file_poll_wait_seconds": (int, 0),
    "model_name": (str, "default"),
    "model_base_path": (str, ""),
    "file_system_poll_wait_seconds": (int, 1),
    "enable_batching": (bool, False),
    "batching_parameters_file": (str, ""),
    "enable_model_warmup": (bool, True),
    "num_request_iterations_for_warmup": (int, 0),
    "monitoring_config_file": (str, ""),
    "allow_version_labels_for_unavailable_models": (bool, False),
    "grpc_max_threads": (int, 0),
    "rest_api_timeout_in_ms": (int, 30000),
    "saved_model_tags": (str, ""),
    "version": (bool, False),
}
IGNORED: dict[str, type] = {
    "rest_api_num_threads": int,
    "num_load_threads": int,
    "num_unload_threads": int,
    "max_num_load_retries": int,
    "load_retry_interval_micros": int,
    "flush_filesystem_caches": bool,
    "tensorflow_session_parallelism": int,
    "tensorflow_intra_op_parallelism": int,
    "tensorflow_inter_op_parallelism": int,
    "per_process_gpu_memory_fraction": float,
    "remove_unused_fields_from_bundle_metagraph": bool,
    "enable_profiler": bool,
    "xla_cpu_compilation_enabled": bool,
    "xla_gpu_compilation_enabled": bool,
    "skip_initialize_tpu": bool,
    "grpc_channel_arguments": str,
    "enable_signature_method_name_check": bool,
}
NOT_SUPPORTED: dict[str, type] = {
    "grpc_socket_path": str,
    "rest_api_enable_cors_support": bool,
    "enable_per_model_batching_parameters": bool,
    "tensorflow_session_config_file": str,
    "use_alts_credentials": bool,
    "ssl_config_file": str,
    "platform_config_file": str,
    "prefer_tflite_model": bool,
    "num_tflite_pools": int,
    "num_tflite_interpreters_per_pool": int,
    "thread_pool_factory_config_file": str,
    "mixed_precision": str,
    "enable_grpc_healthcheck_service": bool,
    "enable_serialization_as_tensor_content": bool,
}


class FlagError(ValueError):
    """The command line would not start ``tensorflow_model_server`` (or asks for what is not served here)."""


@dataclass
class TfsFlags:
    """The implemented flags, with the binary's defaults."""

    port: int = 8500
    rest_api_port: int = 0
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    model_name: str = "default"
    model_base_path: str = ""
    file_system_poll_wait_seconds: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    monitoring_config_file: str = ""
    allow_version_labels_for_unavailable_models: bool = False
    grpc_max_threads: int = 0
    rest_api_timeout_in_ms: int = 30000
    saved_model_tags: str = ""
    version: bool = False
    ignored: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """The binary's start-up checks (``Server::BuildAndStart``).

        Raises:
            FlagError: with the binary's message.
        """
        if self.version:
            return
        if not self.model_base_path and not self.model_config_file:
            raise FlagError(
                "Both server_options.model_base_path and server_options.model_config_file are empty!"
            )
        if self.batching_parameters_file and not self.enable_batching:
            raise FlagError(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        if self.port == 0 and self.rest_api_port == 0:
            raise FlagError("both --port and --rest_api_port are 0: the server would listen on nothing")
        if self.rest_api_port and self.rest_api_port == self.port:
            raise FlagError("--rest_api_port cannot be same as --port.")
        tags = {t for t in self.saved_model_tags.split(",") if t}
        if tags and tags != {"serve"}:
            raise FlagError(
                f"--saved_model_tags={self.saved_model_tags}: only the 'serve' meta graph is served here"
            )
        for name in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise FlagError(f"--{name}={value}: no such file")


def _value(name: str, kind: type, raw: str | None) -> object:
    if kind is bool:
        if raw is None or raw == "true":
            return True
        if raw == "false":
            return False
        raise FlagError(f"Couldn't interpret value ={raw} for flag {name}.")
    if raw is None:
        raise FlagError(f"flag --{name} needs a value: --{name}=<{kind.__name__}>")
    try:
        return kind(raw)
    except ValueError as exc:
        raise FlagError(f"Couldn't interpret value {raw} for flag {name}.") from exc


def parse_tfs_flags(argv: list[str]) -> TfsFlags:
    """Parse ``tensorflow_model_server`` arguments.

    Raises:
        FlagError: a malformed value, a flag the binary does not know, or one that is not served here.
    """
    flags = TfsFlags()
    known = {f.name for f in fields(TfsFlags)} - {"ignored"}
    for arg in argv:
        if not arg.startswith("--"):
            raise FlagError(f"unknown argument: {arg}")
        name, eq, raw = arg[2:].partition("=")
        value = raw if eq else None
        if name in IMPLEMENTED and name in known:
            setattr(flags, name, _value(name, IMPLEMENTED[name][0], value))
        elif name in IGNORED:
            _value(name, IGNORED[name], value)
            flags.ignored[name] = raw if eq else "true"
        elif name in NOT_SUPPORTED:
            raise FlagError(
                f"--{name} is a tensorflow_model_server flag that freshrec serve does not implement"
            )
        else:
            raise FlagError(f"unknown argument: {arg} (not a tensorflow_model_server flag)")
    return flags


def looks_like_tfs_flags(argv: list[str]) -> bool:
    """Whether a ``freshrec serve`` command line uses the binary's flags (``--rest_api_port=...``)."""
    names = {a[2:].partition("=")[0] for a in argv if a.startswith("--")}
    return bool(names & (set(IMPLEMENTED) | set(IGNORED) | set(NOT_SUPPORTED)))
