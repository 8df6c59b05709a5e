"""The run report: one HTML page a person wants to open after ``freshrec run``.

The main loop fills a :class:`RunRecord` as it goes (saved as ``run.json`` after every stage, so an
interrupted run still leaves a readable record) and :func:`render` turns it into
``<workdir>/reports/<run>/index.html`` with PNG plots beside it.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshrec.io import atomic_write_json, atomic_write_text


@dataclass
class StageRecord:
    name: str
    status: str  # "ok" | "failed" | "skipped" | "interrupted"
    seconds: float
    detail: str = ""


@dataclass
class RunRecord:
    """Everything the report shows; plain data, JSON round-trippable."""

    run_id: str
    dataset: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    finished_at: str | None = None
    status: str = "running"
    options: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    # One row per replay window: window_end (ISO stream time), n, and {static,online,served}_{auc,logloss}
    # (on request-time features), {static_exact,online_learner}_{auc,logloss} (context).
    stream: list[dict[str, Any]] = field(default_factory=list)
    # One row per drift check: window_end, drift_share, verdict, alerted, report (relative path), drifted.
    drift: list[dict[str, Any]] = field(default_factory=list)
    # One row per page the monitor opened (window_end, alert, summary): a page asks a person to act.
    pages: list[dict[str, Any]] = field(default_factory=list)
    # Canary timeline: time (ISO wall clock), step, weight, verdict, reasons; per rollout a "rollout" key.
    canary: list[dict[str, Any]] = field(default_factory=list)
    retrains: list[dict[str, Any]] = field(default_factory=list)
    freshness_s: list[float] = field(default_factory=list)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    # Feature attributions + slice metrics per explained version (freshrec.model.explain.Explanation.to_dict).
    explanations: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write atomically, so a Ctrl-C never leaves half a record."""
        atomic_write_json(path, asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        raw = json.loads(path.read_text())
        raw["stages"] = [StageRecord(**s) for s in raw.get("stages", [])]
        return cls(**raw)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[idx]


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "—" if math.isnan(x) else f"{x:.{digits}g}"
    return html.escape(str(x))


def _plots(record: RunRecord, out: Path) -> dict[str, str]:
    """Draw the figures that have data; return {name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        made[name] = f"{name}.png"

    if record.stream:
        df = pd.DataFrame(record.stream)
        df["t"] = pd.to_datetime(df["window_end"], utc=True)
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
        for metric, ax in zip(("auc", "logloss"), axes, strict=True):
            for variant, style in (("static", "--"), ("online", "-"), ("served", ":")):
                col = f"{variant}_{metric}"
                if col in df and df[col].notna().any():
                    ax.plot(df["t"], df[col], style, marker="o", ms=3, label=variant)
            ax.set_title(f"{metric.upper() if metric == 'auc' else metric} over stream time")
            ax.set_xlabel("stream time")
            ax.grid(alpha=0.3)
            ax.legend()
            ax.tick_params(axis="x", rotation=30)
        save(fig, "quality")

    if record.drift:
        df = pd.DataFrame(record.drift)
        df["t"] = pd.to_datetime(df["window_end"], utc=True)
        fig, ax = plt.subplots(figsize=(12, 3.2))
        calibrated = "drift_score" in df and df["drift_score"].notna().any()
        y = "drift_score" if calibrated else "drift_share"
        ax.bar(df["t"], df[y], width=0.6 * _bar_width(df["t"]), color="#6b8fbf", label=y.replace("_", " "))
        if calibrated:
            ax.plot(
                df["t"],
                df["drift_threshold"],
                "--",
                color="#e67e22",
                lw=1,
                label="calibrated threshold (notice)",
            )
        else:
            threshold = record.options.get("drift_share_threshold")
            if threshold is not None:
                ax.axhline(threshold, color="#e67e22", ls="--", lw=1, label="threshold (notice)")
            ax.set_ylim(0, 1)
        paged = df[df.get("alerted", False) == True]  # noqa: E712 — pandas mask
        if len(paged):
            ax.scatter(paged["t"], paged[y], color="#c0392b", marker="v", s=70, zorder=3, label="page")
        ax.set_title(
            "Dataset drift score per window (in null standard deviations; drift is a notice, never a page)"
            if calibrated
            else "Share of drifted features per window"
        )
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        save(fig, "drift")

    if record.canary:
        df = pd.DataFrame(record.canary)
        df["t"] = pd.to_datetime(df["time"], utc=True)
        fig, ax = plt.subplots(figsize=(12, 3.2))
        for rollout, part in df.groupby(df.get("rollout", pd.Series(["canary"] * len(df)))):
            ax.step(part["t"], part["weight"], where="post", label=f"canary weight ({rollout})")
            for _, row in part[part["verdict"].notna()].iterrows():
                color = {"pass": "#27ae60", "fail": "#c0392b"}.get(str(row["verdict"]), "#7f8c8d")
                ax.annotate(
                    str(row["verdict"]),
                    (row["t"], row["weight"]),
                    color=color,
                    fontsize=8,
                    xytext=(0, 6),
                    textcoords="offset points",
                    ha="center",
                )
        ax.set_ylim(-5, 110)
        ax.set_ylabel("% traffic")
        ax.set_title("Canary timeline")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        save(fig, "canary")

    if record.freshness_s:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(record.freshness_s, bins=min(30, max(5, len(record.freshness_s))), color="#16a085")
        ax.set_title("Freshness: newest event learned → served (s)")
        ax.set_xlabel("seconds")
        save(fig, "freshness")

    series = {k: v for k, v in record.latency_ms.items() if v}
    if series:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.boxplot(list(series.values()), showfliers=False)
        ax.set_xticks(range(1, len(series) + 1), list(series), rotation=15)
        ax.set_ylabel("ms")
        ax.set_title("Latency")
        save(fig, "latency")
    return made


def _bar_width(t: Any) -> float:
    import pandas as pd

    if len(t) < 2:
        return 1.0
    return float(pd.Series(t).diff().dt.total_seconds().median() / 86400)


def render(record: RunRecord, out_dir: Path) -> Path:
    """Write ``index.html`` (and its plots, and ``run.json``) into ``out_dir``; return the page path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record.save(out_dir / "run.json")
    plots = _plots(record, out_dir)
    e = html.escape
    from freshrec.model.explain import render_html as render_explanations

    def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
        if not rows:
            return "<p class='muted'>none</p>"
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def figure(name: str, caption: str) -> str:
        if name not in plots:
            return f"<p class='muted'>{e(caption)}: no data in this run.</p>"
        return f"<figure><img src='{plots[name]}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>"

    summary_rows = "".join(
        f"<tr><th>{e(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in record.summary.items()
    )
    lat_rows = [
        {"what": k, "n": len(v), "p50 ms": _percentile(v, 50), "p99 ms": _percentile(v, 99)}
        for k, v in record.latency_ms.items()
        if v
    ]
    fresh = record.freshness_s
    fresh_line = (
        f"{len(fresh)} versions; p50 {_percentile(fresh, 50):.2f} s, p95 {_percentile(fresh, 95):.2f} s"
        if fresh
        else "no online versions served in this run"
    )
    links = "".join(f"<li><a href='{e(link['href'])}'>{e(link['label'])}</a></li>" for link in record.links)
    drift_rows = [
        {**d, "report": f"<a href='{e(d['report'])}'>Evidently report</a>" if d.get("report") else ""}
        for d in record.drift
    ]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>freshrec run {e(record.run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
h1 {{ margin-bottom: .2rem; }} h2 {{ margin-top: 2rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }}
td, th {{ border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }}
thead th {{ background: #f4f6f8; }} .muted {{ color: #888; }}
.ok {{ color: #27ae60; font-weight: 600; }} .failed {{ color: #c0392b; font-weight: 600; }}
img {{ max-width: 100%; }} figure {{ margin: .5rem 0; }} figcaption {{ color: #666; font-size: .85rem; }}
</style></head><body>
<h1>freshrec run <code>{e(record.run_id)}</code></h1>
<p class="muted">dataset {e(record.dataset)} · started {e(record.started_at)} · finished {e(str(record.finished_at))}
 · status <span class="{"ok" if record.status == "ok" else "failed"}">{e(record.status)}</span></p>
<h2>Summary</h2><table>{summary_rows}</table>
<h2>Stages</h2>{table([asdict(s) for s in record.stages], ["name", "status", "seconds", "detail"])}
<h2>Model quality over the stream</h2>
<p>Metrics per replay window, all three on the same inputs: the impressions that were served, each on
the features the gateway looked up for its page at request time. <b>served</b> is what users actually got
from the gateway (stable or canary), joined with their later clicks; <b>static</b> the bootstrap model
frozen; <b>online</b> the streaming learner as it was at the request (before it learned the page's events).
Pages are served in request-time order; before each one the events up to its time land (user and item
activity rows pushed, event log appended), the learner learns them and its guarded versions are served as
soon as they are published (every <code>export_every_events</code>). Context: <b>static_exact</b> is the
frozen model on exact point-in-time features (each event sees every earlier one, its own page's too, which
no request can), <b>online_learner</b> the learner's own prequential score on the features it learns from
(the served ones with <code>learn_on_served_features</code>).</p>
{figure("quality", "AUC and logloss over stream time")}
{table(record.stream, ["window_end", "n", "served_auc", "static_auc", "online_auc", "static_exact_auc", "online_learner_auc", "served_logloss", "static_logloss", "online_logloss"])}
<h2>Monitor: pages and notices</h2>
<p>A <b>page</b> asks a person to act (broken data, served quality down, a part of the loop stopped);
a <b>notice</b> records what the loop saw and did by itself (drift → retraining). Drift thresholds are
calibrated on the training window's own window-to-window variation.</p>
{figure("drift", "drift score per window with page marks")}
{table(record.pages, ["window_end", "alert", "summary"]) if record.pages else "<p>No pages.</p>"}
{table(drift_rows, ["window_end", "verdict", "drift_score", "drift_threshold", "drifted", "notices", "pages", "served_logloss", "estimated_logloss", "report"])}
<h2>Retraining and canary</h2>{table(record.retrains, ["time", "reason", "outcome", "version", "seconds", "detail"])}
{figure("canary", "canary weights and analysis verdicts")}
{table(record.canary, ["time", "rollout", "step", "weight", "verdict", "reasons"])}
<h2>Freshness</h2><p>{e(fresh_line)}</p>{figure("freshness", "freshness distribution")}
<h2>Latency</h2>{figure("latency", "feature lookup and serving latency")}
{table(lat_rows, ["what", "n", "p50 ms", "p99 ms"])}
<h2>Model versions</h2>{table(record.versions, ["version", "source", "label", "auc", "logloss", "created_at"])}
<h2>Explanations</h2>{render_explanations(record.explanations)}
<h2>Artifacts</h2><ul>{links or "<li class='muted'>none</li>"}</ul>
<h2>Options</h2><pre>{e(json.dumps(record.options, indent=2, default=str))}</pre>
</body></html>
"""
    index = out_dir / "index.html"
    return atomic_write_text(index, page)


def _cell(value: Any) -> str:
    if isinstance(value, str) and value.startswith("<a "):
        return value  # links built above from escaped parts
    if isinstance(value, list):
        return html.escape(", ".join(str(v) for v in value))
    return _fmt(value)
