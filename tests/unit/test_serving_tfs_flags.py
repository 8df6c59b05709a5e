"""tensorflow_model_server's flags, BatchingParameters and MonitoringConfig, as the binary reads them.

No TF Serving binary runs here. What is real: the flag names, types, defaults and syntax are those of
``tensorflow_serving/model_servers/main.cc`` (TF Serving 2.21; TensorFlow's ``command_line_flags``:
``--name=value``, bools also bare); the text-format parser is protobuf's own. The ``BatchingParameters`` and
``MonitoringConfig`` schemas are declared in ``freshrec.serving.tfs_config`` with TF Serving's field names
and numbers, because the ``tensorflow-serving-api`` wheel does not ship those two protos. The Rollout's
container args come from the rendered overlays (``kubectl kustomize``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from freshrec.serving.tfs_config import (
    BatchingParameters,
    MonitoringConfig,
    batching_options,
    load_batching_file,
    parse_text_proto,
    prometheus_path,
)
from freshrec.serving.tfs_flags import FlagError, parse_tfs_flags

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_binarys():
    flags = parse_tfs_flags([])
    assert (flags.port, flags.rest_api_port) == (8500, 0)  # REST is off unless asked for
    assert flags.enable_model_warmup is True and flags.enable_batching is False
    assert flags.file_system_poll_wait_seconds == 1 and flags.model_config_file_poll_wait_seconds == 0
    with pytest.raises(FlagError, match=r"model_base_path and server_options\.model_config_file are empty"):
        flags.check()


def test_tensorflow_flag_syntax():
    flags = parse_tfs_flags(
        ["--port=9000", "--rest_api_port=9001", "--enable_batching", "--enable_model_warmup=false"]
    )
    assert (flags.port, flags.rest_api_port, flags.enable_batching, flags.enable_model_warmup) == (
        9000,
        9001,
        True,
        False,
    )
    with pytest.raises(FlagError, match="Couldn't interpret value"):
        parse_tfs_flags(["--enable_batching=yes"])  # only true/false, as TensorFlow's parser
    with pytest.raises(FlagError, match="Couldn't interpret value"):
        parse_tfs_flags(["--port=85OO"])
    with pytest.raises(FlagError, match="needs a value"):
        parse_tfs_flags(["--port"])


def test_unknown_and_unsupported_flags_are_refused_not_ignored():
    # The binary prints "unknown argument" and starts anyway; a typo in a manifest must not pass here.
    with pytest.raises(FlagError, match="unknown argument: --enable_batchin"):
        parse_tfs_flags(["--enable_batchin"])
    with pytest.raises(FlagError, match="unknown argument: 8500"):
        parse_tfs_flags(["--port=8500", "8500"])
    with pytest.raises(FlagError, match="does not implement"):
        parse_tfs_flags(["--ssl_config_file=/etc/ssl.conf"])
    ignored = parse_tfs_flags(["--rest_api_num_threads=8", "--flush_filesystem_caches=false"]).ignored
    assert ignored == {"rest_api_num_threads": "8", "flush_filesystem_caches": "false"}


def test_start_up_checks(tmp_path):
    conf = tmp_path / "models.config"
    conf.write_text('model_config_list { config { name: "ctr" base_path: "/models/ctr" } }')
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 64 }")
    ok = parse_tfs_flags([f"--model_config_file={conf}", "--rest_api_port=8501"])
    ok.check()
    with pytest.raises(FlagError, match="batching_parameters_file is set without setting"):
        parse_tfs_flags([f"--model_config_file={conf}", f"--batching_parameters_file={batching}"]).check()
    with pytest.raises(FlagError, match="cannot be same as --port"):
        parse_tfs_flags([f"--model_config_file={conf}", "--port=8501", "--rest_api_port=8501"]).check()
    with pytest.raises(FlagError, match="no such file"):
        parse_tfs_flags([f"--model_config_file={tmp_path / 'missing.config'}"]).check()


def test_batching_parameters_text_format_and_rules(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(
        """
        max_batch_size { value: 128 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 2 }
        thread_pool_name { value: "ctr_batch_threads" }
        allowed_batch_sizes: 16
        allowed_batch_sizes: 64
        allowed_batch_sizes: 128
        pad_variable_length_inputs: false
        """
    )
    opts = load_batching_file(path)
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.max_enqueued_batches) == (128, 2000, 100)
    assert opts.allowed_batch_sizes == (16, 64, 128) and opts.num_batch_threads == 2
    assert opts.thread_pool_name == "ctr_batch_threads" and opts.execution_limit == 128
    # A misspelt field is a parse error, as in the binary (which then does not start).
    path.write_text("max_batch_sise { value: 128 }")
    with pytest.raises(ValueError, match="Invalid protobuf file"):
        load_batching_file(path)
    # Scalars are wrapper messages in TF Serving's proto: the bare form does not parse.
    path.write_text("max_batch_size: 128")
    with pytest.raises(ValueError, match="Invalid protobuf file"):
        load_batching_file(path)
    params = BatchingParameters()
    params.max_batch_size.value = 100
    params.allowed_batch_sizes.extend([10, 50])
    with pytest.raises(ValueError, match="must match max_batch_size; last entry was 50; expected 100"):
        batching_options(params)
    params.enable_large_batch_splitting.value = True
    params.max_execution_batch_size.value = 50
    assert batching_options(params).execution_limit == 50
    params.allowed_batch_sizes[:] = [50, 10]
    with pytest.raises(ValueError, match="monotonically increasing"):
        batching_options(params)


def test_monitoring_config(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text('prometheus_config { enable: true path: "/metrics/tfs" }')
    assert prometheus_path(path) == "/metrics/tfs"
    path.write_text("prometheus_config { enable: true }")
    assert prometheus_path(path) == "/monitoring/prometheus/metrics"
    path.write_text("prometheus_config { enable: false }")
    assert prometheus_path(path) is None and prometheus_path(None) is None
    path.write_text("prometheus { enable: true }")
    with pytest.raises(ValueError, match="Invalid protobuf file"):
        parse_text_proto(path, MonitoringConfig)


def _rendered_tfserving_containers() -> list[tuple[str, dict, dict]]:
    out = []
    for overlay in sorted((REPO / "manifests" / "overlays").iterdir()):
        text = subprocess.run(
            ["kubectl", "kustomize", str(overlay)], check=True, capture_output=True, text=True
        ).stdout
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "Rollout":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    if c.get("command") == ["tensorflow_model_server"]:
                        out.append((overlay.name, doc, c))
    return out


def test_every_overlays_tf_serving_args_parse_and_use_the_config_files_it_mounts():
    """The rendered Rollout's args are accepted, and each file flag points into a volume mounted from the
    ConfigMap that holds that file (so the binary can read it)."""
    found = _rendered_tfserving_containers()
    assert {o for o, _, _ in found} >= {"local", "gpu", "production"}
    for overlay, rollout, container in found:
        flags = parse_tfs_flags(container["args"])
        assert flags.rest_api_port and flags.port and flags.model_config_file, overlay
        volumes = {v["name"]: v for v in rollout["spec"]["template"]["spec"]["volumes"]}
        for name in ("batching_parameters_file", "monitoring_config_file"):
            value = getattr(flags, name)
            if not value:
                continue
            mount = next(
                m for m in container["volumeMounts"] if value.startswith(m["mountPath"].rstrip("/") + "/")
            )
            assert "configMap" in volumes[mount["name"]], (overlay, name, mount)
