"""The on-call drill, reduced: MovieLens-100k through the real model server, learner and monitor.

The full drill is ``python -m benchmarks.oncall_drill`` (its figures are in results.md); this one replays
2,500 events in windows of 500 with each incident injected from the fourth window, and holds the issue's
targets: no page on the clean replay, every incident paged within a window by the alert that names it.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_drill_pages_every_incident_and_nothing_else(datasets_dir, tmp_path):
    from benchmarks.oncall_drill import INCIDENTS, DrillConfig, drill, render, rows

    config = DrillConfig(bootstrap_events=10_000, replay_events=2_500, window_events=500, incident_window=3)
    result = drill(config, datasets_dir)
    clean = result.clean
    assert clean.first_pages == [], clean.first_pages
    assert any(r.notices for r in clean.windows)  # the replay's changes are noticed, not paged
    for scenario in result.incidents:
        expected, _ = INCIDENTS[scenario.name]
        page = scenario.page
        assert page is not None, f"{scenario.name}: no {expected} page; pages: {scenario.first_pages}"
        assert page["window"] - config.incident_window <= 1, (scenario.name, page)
        assert scenario.named, (scenario.name, page)
        # Nothing paged before the incident started.
        assert all(p["window"] >= config.incident_window for p in scenario.first_pages), scenario.first_pages
    figures = {r.figure: r for r in rows(result)}
    assert figures["oncall drill: pages on the clean replay"].value == 0
    assert figures["oncall drill: incidents paged"].value == f"{len(INCIDENTS)}/{len(INCIDENTS)}"
    est = figures["oncall drill: label-free estimate error"].value
    assert 0 < est < 0.2
    index = render(result, tmp_path / "drill")
    text = index.read_text()
    assert text.count("<img ") == len(INCIDENTS) + 1
    assert all(
        (tmp_path / "drill" / f"scenario-{i}.png").stat().st_size > 5_000 for i in range(len(INCIDENTS) + 1)
    )
    assert "FreshrecCTRCollapse" in text
