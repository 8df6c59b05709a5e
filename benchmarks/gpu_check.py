"""GPU check: DCN-V2 training throughput on the GPU against the CPU, in the same run.

What the cluster's GPU train task does (``freshrec.training``: ``MirroredStrategy`` over the visible GPUs,
``mixed_float16``), on the MovieLens-1M tail (time-ordered training window, the freshrec feature spec and
``tf.data`` pipeline), measured twice in one process:

- **GPU**: ``MirroredStrategy`` over every visible GPU, ``mixed_float16`` (loss scaling by Keras), batch
  ``--batch`` per replica;
- **CPU**: ``OneDeviceStrategy('/cpu:0')``, float32, the same global batch: the baseline.

It prints examples/s of each, the ratio, and the device the model's variables and one step's output are on
(so a CUDA-less image on a GPU node shows up as ``CPU:0``). Where no GPU is visible (a machine without
one, or the CPU image) the GPU row says so and only the CPU figure is measured.

    python -m benchmarks.gpu_check [--quick] [--rows 300000] [--steps 200]

Not part of ``make bench`` by default on machines without a GPU (it is registered; its GPU row then reads
"not run").
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.results import Row, print_rows, write_rows

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
GPU_ROW = "training throughput GPU DCN-V2"
CPU_ROW = "training throughput CPU DCN-V2 (gpu_check baseline)"


def _data(rows: int):
    from freshrec.config import ModelSettings
    from freshrec.data.datasets import load_dataset, load_description, split_events
    from freshrec.features.training_set import build_training_frame
    from freshrec.model.spec import FeatureSpec
    from freshrec.training import load_columns

    desc = load_description("movielens-1m-tail")
    data = load_dataset(desc, DATASETS.resolve())
    frame = build_training_frame(data.events, data.users, data.items)
    train_df, _, _ = split_events(frame, desc, (0.8, 0.1, 0.1))
    train_df = train_df.tail(rows).reset_index(drop=True)
    ms = ModelSettings()
    spec = FeatureSpec.for_description(desc, ms.id_hash_buckets, frame=train_df)
    x, y = load_columns(train_df, spec)
    return spec, ms, x, y


def _measure(spec, ms, x, y, strategy, policy: str, batch: int, steps: int) -> tuple[float, str, str]:
    """examples/s over ``steps`` steps after a warm-up, the variables' device and one output's device."""
    import keras

    from freshrec.model.builder import build_model
    from freshrec.model.export import attach
    from freshrec.training import make_dataset

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = attach(build_model(spec, ms), spec, ms)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy())
    finally:
        keras.config.set_dtype_policy(before)
    global_batch = batch * strategy.num_replicas_in_sync
    ds = make_dataset(x, y, global_batch, shuffle=True, seed=0).repeat()
    model.fit(ds, steps_per_epoch=10, epochs=1, verbose=0)  # tracing and the first transfers, not timed
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    rate = steps * global_batch / (time.perf_counter() - start)
    var_device = model.trainable_variables[0].value.device if model.trainable_variables else "?"
    head = {k: v[:8] for k, v in x.items()}
    with strategy.scope():
        out = model(head, training=False)
    out_device = getattr(out, "device", "?")
    return rate, str(var_device), str(out_device)


def run(quick: bool, rows: int | None = None, steps: int | None = None, batch: int = 2048) -> list[Row]:
    """Measure; return the GPU row (or "not run") and the CPU row of the same run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rows = rows or (60_000 if quick else 300_000)
    steps = steps or (20 if quick else 100)
    spec, ms, x, y = _data(rows)
    gpus = tf.config.list_logical_devices("GPU")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    cpu_steps = max(5, steps // 5)
    cpu_rate, cpu_var, cpu_out = _measure(
        spec, ms, x, y, tf.distribute.OneDeviceStrategy("/cpu:0"), "float32", batch, cpu_steps
    )
    base = (
        f"MovieLens-1M tail, {len(y):,} training rows, global batch {batch} per replica, "
        f"load {' '.join(load)}, {os.cpu_count()} CPU cores, tensorflow {tf.__version__}"
    )
    cpu = Row(
        CPU_ROW,
        cpu_rate,
        conditions=f"{base}; OneDeviceStrategy('/cpu:0'), float32, {cpu_steps} steps; variables on {cpu_var}, "
        f"output on {cpu_out}",
        unit="ex/s",
    )
    print(f"CPU: {cpu_rate:,.0f} examples/s (variables {cpu_var}, output {cpu_out})")
    if not gpus:
        built = tf.test.is_built_with_cuda()
        why = (
            "no GPU lent"
            if built
            else "no GPU visible (this TensorFlow is built without CUDA: the CPU image)"
        )
        print(f"GPU: not run: {why}")
        return [
            Row(GPU_ROW, f"not run: {why}", conditions=f"{base}; the CPU figure of this run is the next row"),
            cpu,
        ]
    rate, var_device, out_device = _measure(
        spec, ms, x, y, tf.distribute.MirroredStrategy([g.name for g in gpus]), "mixed_float16", batch, steps
    )
    print(
        f"GPU x{len(gpus)}: {rate:,.0f} examples/s, {rate / cpu_rate:.1f}x the CPU "
        f"(variables {var_device}, output {out_device})"
    )
    gpu = Row(
        GPU_ROW,
        rate,
        cpu_rate,
        conditions=f"{base}; MirroredStrategy over {len(gpus)} GPU(s) {[g.name for g in gpus]}, mixed_float16, "
        f"{steps} steps; variables on {var_device}, output on {out_device}; baseline = the CPU row of this run",
        unit="ex/s",
    )
    return [gpu, cpu]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick, args.rows, args.steps, args.batch)
    print_rows(rows)
    if not args.no_write:
        write_rows(rows)


if __name__ == "__main__":
    main()
