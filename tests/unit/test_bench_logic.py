"""The benchmark's pure decisions: the scale search and the target verdicts (no processes)."""

from __future__ import annotations

import pytest

from bench import report, run


def _fake_step(capacity: int, tried: list[int]):
    def real_time(system, probe, plan, devices, hold_s):
        tried.append(devices)
        ok = devices <= capacity
        return {"devices": devices, "ok": ok, "lost": 0 if ok else 5,
                "latency_ms": {"p50": 100.0, "p99": 400.0 if ok else 3000.0}}
    return real_time


@pytest.mark.parametrize("capacity", [40, 130, 900])
def test_scale_search_brackets_the_largest_passing_count(monkeypatch, capacity):
    """Up by 1.25x while steps pass, then bisect: the best pass is within ~5 % of capacity."""
    tried: list[int] = []
    monkeypatch.setattr(run, "real_time", _fake_step(capacity, tried))
    plan = run.Plan(scale_steps=20, scale_max=4000)
    steps = run.scale_search(None, None, plan, fps_max=300.0)  # starts at 0.7 * 300 / 2 = 105
    assert tried[0] == 105 and len(tried) == len(set(tried)) <= 20
    best = max(s["devices"] for s in steps if s["ok"])
    failed = min(s["devices"] for s in steps if not s["ok"])
    assert best <= capacity < failed
    assert failed - best <= max(2, failed // 20) + 1


def test_scale_search_stops_at_scale_max(monkeypatch):
    """A machine that carries everything is tried up to --scale-max and no further."""
    tried: list[int] = []
    monkeypatch.setattr(run, "real_time", _fake_step(10**6, tried))
    run.scale_search(None, None, run.Plan(scale_steps=20, scale_max=500), fps_max=300.0)
    assert max(tried) == 500 and tried.count(500) == 1


def test_targets_are_judged_on_the_run_figures():
    """Each target is met or missed from the run's own values; a missing value is missed."""
    t = report.targets({"ratio_ceiling": 0.5, "ratio_naive": 12.0, "latency_ms": {"p99": 250.0},
                        "max_devices": 0})
    assert t["ratio_ceiling"]["met"] and t["latency_p99_ms"]["met"]
    assert not t["ratio_naive"]["met"] and not t["max_devices"]["met"]
    assert not report.targets({"latency_ms": {}})["latency_p99_ms"]["met"]


def test_the_busy_warning_looks_at_the_load_before_the_run_only():
    """The load average at the end of a run is mostly the bench's own: only the one taken
    before anything started says whether something else was using the machine."""
    import json
    from pathlib import Path

    result = json.loads((Path(__file__).parents[2] / "bench" / "results" / "2026-12-06.json")
                        .read_text())
    result["machine"].update(cpus=2, loadavg_at_start=[0.3, 0.5, 0.6], loadavg_at_end=[3.9, 3.0, 2.0])
    assert "The machine was busy" not in report.markdown(result, None)
    result["machine"]["loadavg_at_start"] = [2.5, 1.0, 0.5]
    assert "The machine was busy" in report.markdown(result, None)
