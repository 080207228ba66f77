"""`soundmon bench --quick`: every benchmark phase runs end to end (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"ceiling_fps", "naive_fps", "soundmon_fps", "ratio_ceiling", "ratio_naive", "latency_ms",
        "max_devices", "lost_frames", "cpu_ms_per_frame", "memory_mb", "targets", "machine"}


def test_quick_bench_measures_every_phase_and_writes_json_doc_and_plot(tmp_path: Path):
    """The harness runs ceiling, naive, soundmon, latency and scale, loses nothing, and reports."""
    results, docs = tmp_path / "results", tmp_path / "docs"
    docs.mkdir()
    (docs / "performance.md").write_text("# Performance\n\nhand-written text\n\n"
                                         "<!-- bench:results:start -->\nold\n<!-- bench:results:end -->\n"
                                         "\nmore text\n")
    run = subprocess.run([sys.executable, "-m", "soundmon", "bench", "--quick", "--results",
                          str(results), "--docs", str(docs)], cwd=ROOT, capture_output=True,
                         text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [out] = list(results.glob("*-quick.json"))
    result = json.loads(out.read_text())
    assert KEYS <= set(result)
    # every phase moved frames: each design's rate comes from frames it really carried
    assert result["ceiling_fps"] > 0 and result["naive_fps"] > 0 and result["soundmon_fps"] > 0
    assert result["ratio_ceiling"] == pytest.approx(result["soundmon_fps"] / result["ceiling_fps"],
                                                    abs=1e-3)
    phases = result["phases"]
    assert phases["ceiling"]["lost"] == 0 and phases["naive"]["lost"] == 0
    assert result["lost_frames"] == 0, phases
    lat = result["latency_ms"]
    assert lat["n"] >= phases["latency"]["published"]  # every published frame was seen stored
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["latency_sse_ms"]["n"] > 0
    assert phases["scale"] and result["max_devices"] in [0, *(s["devices"] for s in phases["scale"])]
    cpu = result["cpu_ms_per_frame"]["soundmon"]
    assert {"gateway", "worker-preprocess", "mosquitto", "redis"} <= set(cpu)
    assert all(v > 0 for v in result["memory_mb"].values())
    # the doc's results section was replaced, the hand-written text around it kept
    doc = (docs / "performance.md").read_text()
    assert "hand-written text" in doc and "more text" in doc and "\nold\n" not in doc
    assert "| soundmon / naive |" in doc and "performance.png" in doc
    assert (docs / "performance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
