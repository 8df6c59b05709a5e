"""The run report renders from a RunRecord: plots for the data present, tables, links, a JSON twin."""

from __future__ import annotations

from freshrec.report import RunRecord, StageRecord, render


def _record() -> RunRecord:
    record = RunRecord(run_id="r1", dataset="synthetic", options={"drift_share_threshold": 0.5})
    record.stages.append(StageRecord("prepare", "ok", 1.5, "1000 events"))
    record.stream = [
        {
            "window_end": f"2024-01-0{d}T00:00:00+00:00",
            "n": 100,
            "static_auc": 0.6,
            "online_auc": 0.65,
            "served_auc": 0.62,
            "static_logloss": 0.7,
            "online_logloss": 0.66,
            "served_logloss": 0.68,
        }
        for d in range(1, 6)
    ]
    record.drift = [
        {
            "window_end": f"2024-01-0{d}T00:00:00+00:00",
            "drift_share": d / 10,
            "verdict": "ok",
            "alerted": d == 4,
            "report": f"drift/{d}.html",
            "drifted": [],
        }
        for d in range(1, 6)
    ]
    record.latency_ms = {"rank": [5.0, 6.0, 30.0], "lookup": []}
    return record


def test_render_writes_page_plots_and_json(tmp_path):
    record = _record()
    index = render(record, tmp_path / "rep")
    page = index.read_text()
    assert index.name == "index.html"
    for plot in ("quality.png", "drift.png", "latency.png"):
        assert (tmp_path / "rep" / plot).stat().st_size > 1000
        assert plot in page
    # figures without data say so rather than showing an empty axis
    assert not (tmp_path / "rep" / "canary.png").exists()
    assert "canary weights and analysis verdicts: no data in this run" in page
    assert "href='drift/4.html'" in page
    assert RunRecord.load(tmp_path / "rep" / "run.json").stream == record.stream


def test_render_escapes_untrusted_text(tmp_path):
    record = RunRecord(run_id="<script>x</script>", dataset="d")
    record.stages.append(StageRecord("train", "failed", 0.1, "<b>boom</b>"))
    page = render(record, tmp_path).read_text()
    assert "<script>x</script>" not in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page


def test_record_roundtrip_empty(tmp_path):
    record = RunRecord(run_id="e", dataset="d")
    page = render(record, tmp_path).read_text()
    assert "no online versions served in this run" in page
    assert RunRecord.load(tmp_path / "run.json").run_id == "e"
