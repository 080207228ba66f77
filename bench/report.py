"""What a bench run leaves behind: ``<results>/<date>.json``, a plot and a markdown section.

The section goes between ``<!-- bench:results:start -->`` and ``<!-- bench:results:end -->``
of ``<docs>/performance.md`` (the text around it is written by hand and kept); the plot is
``<docs>/performance.png``, drawn with matplotlib's file-only Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"

#: (key, target, test, label) of the issue's targets, all measured in the same run
TARGETS = [
    ("ratio_ceiling", 0.5, lambda v, t: v >= t, "soundmon / transport ceiling"),
    ("ratio_naive", 20.0, lambda v, t: v >= t, "soundmon / naive"),
    ("latency_p99_ms", 250.0, lambda v, t: v <= t, "p99 publish -> stored at half load, ms"),
    ("max_devices", 2000, lambda v, t: v >= t, "real-time devices with no loss and p99 < 1 s"),
]


def targets(result: dict) -> dict:
    values = dict(result)
    values["latency_p99_ms"] = (result.get("latency_ms") or {}).get("p99")
    out = {}
    for key, target, test, text in TARGETS:
        v = values.get(key)
        out[key] = {"value": v, "target": target, "met": v is not None and bool(test(v, target)),
                    "what": text}
    return out


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) < 10:
            return f"{v:,.3f}".rstrip("0").rstrip(".")
        # two decimals below 100: 19.97 must not read as 20 next to a target of 20
        return f"{v:,.2f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(result: dict, plot_name: str | None = "performance.png") -> str:
    m = result["machine"]
    lines = [
        START,
        f"### Results: {result['date']} ({result['mode']} run)",
        "",
        f"Machine: {m['cpus']} x {m['cpu_model'] or 'CPU'}, {m['memory_gb']} GB, {m['platform']}, "
        f"Python {m['python']}, {m.get('mosquitto', '?')}, {' '.join(m.get('redis', '?').split()[:3])}; "
        f"load average at start {m['loadavg_at_start']}. Command: `{result['command']}`, "
        f"{result['elapsed_s']:.0f} s. Frames: 8 kHz x 500 ms, {result['frame_bytes']:,} bytes, QoS 1.",
        "",
    ]
    load = m["loadavg_at_start"][0]  # at the end it is mostly the bench's own load
    if load > 0.5 * m["cpus"]:
        lines += [f"**The machine was busy** (1-minute load average {load} on {m['cpus']} "
                  "CPUs when the run started): these figures are indicative only; "
                  "rerun `make bench` on a quiet machine.", ""]
    lines += [
        "| figure | measured | target | met |",
        "|---|---:|---:|:---:|",
        f"| transport ceiling, frames/s | {_fmt(result['ceiling_fps'])} | | |",
        f"| naive design, frames/s | {_fmt(result['naive_fps'])} | | |",
        f"| soundmon, frames/s published -> stored | {_fmt(result['soundmon_fps'])} | | |",
    ]
    for t in result["targets"].values():
        lines.append(f"| {t['what']} | {_fmt(t['value'])} | {_fmt(t['target'])} | "
                     f"{'yes' if t['met'] else '**no**'} |")
    lines.append(f"| frames lost (soundmon phases) | {_fmt(result['lost_frames'])} | 0 | "
                 f"{'yes' if result['lost_frames'] == 0 else '**no**'} |")
    lat, sse = result["latency_ms"], result["latency_sse_ms"]
    lines += [
        "",
        f"Latency at half load: {result['latency_devices']:,} devices x 2 frames/s "
        f"({_fmt(result['latency_offered_fps'])} frames/s), ms from publish:",
        "",
        "| to | p50 | p95 | p99 | max | levels |",
        "|---|---:|---:|---:|---:|---:|",
        f"| stored (level event after the commit) | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} | "
        f"{_fmt(lat['p99'])} | {_fmt(lat['max'])} | {_fmt(lat['n'])} |",
        f"| SSE event (`/api/stream`) | {_fmt(sse['p50'])} | {_fmt(sse['p95'])} | "
        f"{_fmt(sse['p99'])} | {_fmt(sse['max'])} | {_fmt(sse['n'])} |",
        "",
        "CPU per frame, ms (user + system of each process tree during the full-speed phase):",
        "",
    ]
    cpu = result["cpu_ms_per_frame"]
    parts = sorted({k for d in cpu.values() for k in d})
    lines += ["| component | ceiling | naive | soundmon |", "|---|---:|---:|---:|"]
    for p in parts:
        lines.append(f"| {p} | " + " | ".join(_fmt(cpu[d].get(p)) for d in ("ceiling", "naive", "soundmon"))
                     + " |")
    lines.append("| **total** | " + " | ".join(_fmt(round(sum(cpu[d].values()), 3))
                                             for d in ("ceiling", "naive", "soundmon")) + " |")
    lines += ["", f"Scale: real-time devices, each step held {result['scale_hold_s']:.0f} s "
              f"(pass: no frame lost and p99 publish -> stored < 1 s):", "",
              "| devices | frames/s offered | published | lost | p50 ms | p99 ms | generator lag p99 ms "
              "| pass |",
              "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for s in result["phases"]["scale"]:
        lag = (s.get("loadgen_lag_ms") or {}).get("p99")
        lines.append(f"| {s['devices']:,} | {_fmt(s['offered_fps'])} | {s['published']:,} | {s['lost']:,} | "
                     f"{_fmt(s['latency_ms']['p50'])} | {_fmt(s['latency_ms']['p99'])} | {_fmt(lag)} | "
                     f"{'yes' if s['ok'] else 'no'} |")
    mem = result["memory_mb"]
    lines += ["", f"Memory (PSS, MB) at {result['max_devices']:,} devices:" if result["max_devices"]
              else "Memory (PSS, MB) at the last scale step:", "",
              "| " + " | ".join(mem) + " |", "|" + "---:|" * len(mem),
              "| " + " | ".join(_fmt(v) for v in mem.values()) + " |", ""]
    if plot_name:
        lines += [f"![throughput, latency and scale]({plot_name})", ""]
    lines.append(END)
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    names = ["transport\nceiling", "soundmon", "naive"]
    values = [result["ceiling_fps"], result["soundmon_fps"], result["naive_fps"]]
    bars = ax.bar(names, values, color=["#999999", "#2b7bba", "#d95f02"])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    ax.margins(y=0.12)
    ax.set_ylabel("frames/s, published -> stored")
    ax.set_title("Throughput (8 KB frames, QoS 1)")
    ax = axes[1]
    keys = ["p50", "p95", "p99"]
    x = range(len(keys))
    lat, sse = result["latency_ms"], result["latency_sse_ms"]
    ax.bar([i - 0.2 for i in x], [lat[k] or 0 for k in keys], 0.4, label="stored")
    ax.bar([i + 0.2 for i in x], [sse[k] or 0 for k in keys], 0.4, label="SSE event")
    ax.axhline(250, color="red", ls="--", lw=1, label="p99 target")
    ax.set_xticks(list(x), keys)
    ax.set_ylabel("ms from publish")
    ax.set_title(f"Latency, {result['latency_devices']:,} devices x 2 frames/s")
    ax.legend()
    ax = axes[2]
    steps = sorted(result["phases"]["scale"], key=lambda s: s["devices"])
    ok = [s for s in steps if s["ok"]]
    bad = [s for s in steps if not s["ok"]]
    ax.plot([s["devices"] for s in steps], [s["latency_ms"]["p99"] or 0 for s in steps], color="#2b7bba")
    ax.scatter([s["devices"] for s in ok], [s["latency_ms"]["p99"] or 0 for s in ok], color="green",
               label="pass", zorder=3)
    ax.scatter([s["devices"] for s in bad], [s["latency_ms"]["p99"] or 0 for s in bad], color="red",
               marker="x", label="fail (loss or p99 >= 1 s)", zorder=3)
    ax.axhline(1000, color="red", ls="--", lw=1, label="p99 limit, 1 s")
    ax.set_yscale("log")
    ax.set_xlabel("real-time devices (2 frames/s each)")
    ax.set_ylabel("p99 publish -> stored, ms")
    ax.set_title(f"Scale, {result['scale_hold_s']:.0f} s per step")
    ax.legend()
    fig.suptitle(f"soundmon bench {result['date'][:10]} ({result['mode']}, "
                 f"{result['machine']['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(result: dict, results_dir: Path, docs_dir: Path | None) -> Path:
    """The JSON file, and with ``docs_dir`` the plot and the doc's results section."""
    suffix = "" if result["mode"] == "full" else f"-{result['mode']}"
    out = results_dir / f"{result['date'][:10]}{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        plot(result, docs_dir / "performance.png")
        doc = docs_dir / "performance.md"
        section = markdown(result)
        if doc.exists():
            text = doc.read_text()
            if START in text and END in text:
                head, rest = text.split(START, 1)
                text = head + section + rest.split(END, 1)[1]
            else:
                text = text.rstrip("\n") + "\n\n" + section + "\n"
        else:
            text = "# soundmon performance\n\n" + section + "\n"
        doc.write_text(text)
    return out


def summary(result: dict) -> str:
    t = result["targets"]
    lines = [f"ceiling {result['ceiling_fps']:,.0f} frames/s, naive {result['naive_fps']:,.0f}, "
             f"soundmon {result['soundmon_fps']:,.0f} (x{result['ratio_ceiling']} of the ceiling, "
             f"x{result['ratio_naive']} naive)",
             f"latency publish -> stored p50/p95/p99 {result['latency_ms']['p50']}/"
             f"{result['latency_ms']['p95']}/{result['latency_ms']['p99']} ms; "
             f"max devices {result['max_devices']} ({result['scale_hold_s']:.0f} s per step); "
             f"lost {result['lost_frames']}"]
    lines += [f"  {'met   ' if v['met'] else 'MISSED'} {v['what']}: {v['value']} (target {v['target']})"
              for v in t.values()]
    return "\n".join(lines)
