"""``soundmon bench``: throughput, latency and scale of soundmon, its transport ceiling and the
naive design, measured in one run on loopback (docs/performance.md explains every figure).

Phases, each on fresh processes started with soundmon's own configs (``bench.parts``):

1. ceiling: the load generator -> mosquitto -> one counting paho subscriber;
2. naive: the same load -> one Celery task per frame with the samples as a JSON list;
3. soundmon: the same load -> the real gateway, workers, store (and dashboard), then
4. latency: real-time devices (2 frames/s each) at half the throughput of phase 3;
5. scale: more and more real-time devices, each held ``scale_hold_s``; the largest count
   with no frame lost and p99 publish -> stored under 1 s wins.

Ratios compare figures of the same run. Nothing here asserts a time.
"""

from __future__ import annotations

import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.parts import ROOT, TOKEN, Child, System, cpu, cpu_delta, memory
from bench.probe import Probe, percentiles

P99_LIMIT_MS = 1000.0  # scale: a device count passes with p99 publish -> stored under this


@dataclass
class Plan:
    """What to run; ``Plan.quick()`` is the under-a-minute harness check of ``make test``."""

    mode: str = "full"
    devices: int = 8  # full-speed devices in the throughput phases
    ceiling_frames: int = 5000  # per device
    naive_frames: int = 400
    soundmon_frames: int = 2500
    rate: int = 8000
    frame_ms: int = 500
    fps: float = 2.0  # frames/s of a real-time device
    latency_s: float = 60.0
    scale_hold_s: float = 60.0
    scale_steps: int = 4
    scale_start: int = 0  # 0: from the measured throughput
    scale_max: int = 4000
    warmup_frames: int = 10  # per device, before each timed full-speed phase
    extra_workers: bool = True  # also the workers off the levels' path (notify, recording)
    profile: bool = False
    results_dir: Path = ROOT / "bench" / "results"
    docs_dir: Path | None = ROOT / "docs"
    command: str = "soundmon bench"
    #: SOUNDMON_* settings for soundmon's parts in this run (e.g. the batch size), from --set
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw: object) -> Plan:
        base = dict(mode="quick", devices=4, ceiling_frames=500, naive_frames=40,
                    soundmon_frames=250, latency_s=3.0, scale_hold_s=3.0, scale_steps=1,
                    scale_max=400, warmup_frames=2, extra_workers=False)
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def loadgen(system: System, plan: Plan, devices: int, *, frames: int | None = None,
            duration_s: float | None = None, name: str = "loadgen", boot_base: int = 0) -> Child:
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(system.mqtt_port),
            "--devices", str(devices), "--name-prefix", "d", "--credentials",
            str(system.credentials), "--rate", str(plan.rate), "--frame-ms", str(plan.frame_ms)]
    if boot_base:
        argv += ["--boot-base", str(boot_base)]
    if frames is not None:
        argv += ["--full-speed", "--frames", str(frames)]
    else:
        argv += ["--fps", str(plan.fps), "--duration", str(duration_s)]
    gen = Child(name, argv, system.env, system.logs / f"{name}.log")
    gen.line()  # {"connected": n}: every device is connected
    return gen


def wait_stored(system: System, base: int, expected: int, poll_s: float = 0.05,
                stall_s: float = 60.0) -> tuple[int, float, float]:
    """Wait until ``expected`` new levels are stored, or none came for ``stall_s``.

    Returns (stored, and the sustained rate in frames/s: the slope from 10 % to 90 % of
    ``expected``, which leaves out the ramp-up and the tail; 0 if 90 % never came)."""
    seen, last_change = base, time.time()
    t10 = t90 = 0.0
    n10 = n90 = 0
    while True:
        n = system.stored()
        now = time.time()
        if n != seen:
            seen, last_change = n, now
        if not t10 and n - base >= expected * 0.1:
            t10, n10 = now, n - base
        if not t90 and n - base >= expected * 0.9:
            t90, n90 = now, n - base
        if n - base >= expected or now - last_change > stall_s:
            rate = (n90 - n10) / (t90 - t10) if t90 > t10 else 0.0
            return n - base, last_change, rate
        system.check_alive()
        time.sleep(poll_s)


def warm_up(system: System, plan: Plan) -> None:
    """A few frames per device through the system first: imports, caches, the database, and
    the DSP's compiled kernels (numba compiles them on first use if its cache is stale, which
    can take a minute on a loaded machine)."""
    base = system.stored()
    gen = loadgen(system, plan, plan.devices, frames=plan.warmup_frames, name="loadgen-warmup")
    sent = gen.result(timeout=120)
    stored, _, _ = wait_stored(system, base, sent["acked"], poll_s=0.2, stall_s=300.0)
    if stored < sent["acked"]:
        raise SystemExit(f"bench: {system.design} stored {stored} of {sent['acked']} warm-up "
                         f"frames in 5 minutes; see {system.logs}")


def profilers(system: System, names: list[str], out: Path) -> list[subprocess.Popen]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for name in names:
        pid = system.pids()[name]
        procs.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "100", "--gil",
             "--format", "speedscope", "-o", str(out / f"profile-{name}.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def stop_profilers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def phase_ceiling(plan: Plan, workdir: Path, names: list[str]) -> dict:
    system = System("ceiling", workdir, names, plan.extra_workers)
    try:
        system.start()
        total = plan.devices * plan.ceiling_frames
        sink = Child("sink", [sys.executable, "-m", "bench.sink", "--port", str(system.mqtt_port),
                              "--username", "svc.gateway", "--password",
                              system.services["svc.gateway"], "--expect", str(total)],
                     system.env, system.logs / "sink.log")
        sink.line()  # subscribed
        before = cpu(system.pids())
        gen = loadgen(system, plan, plan.devices, frames=plan.ceiling_frames)
        got = sink.result(timeout=600)
        after = cpu(system.pids())
        sent = gen.result(timeout=120)
        e2e = got["received"] / max(1e-9, got["last"] - sent["first_publish"])
        span = got["t90"] - got["t10"]
        fps = (total * 9 // 10 - max(1, total // 10)) / span if span > 0 else e2e
        comp = cpu_delta(before, after)
        comp.update(sink=got["cpu_s"], loadgen=sent["cpu_s"])
        return {"fps": round(fps, 1), "fps_end_to_end": round(e2e, 1), "frames": total,
                "received": got["received"],
                "lost": sent["acked"] - got["received"], "cpu_s": comp,
                "frame_bytes": sent["frame_bytes"]}
    finally:
        system.stop()


def throughput(system: System, plan: Plan, frames: int, poll_s: float = 0.05,
               profile_dir: Path | None = None) -> dict:
    """Full-speed devices through a running system; frames/s published -> stored."""
    total = plan.devices * frames
    warm_up(system, plan)
    base = system.stored()
    before = cpu(system.pids())
    gen = loadgen(system, plan, plan.devices, frames=frames)
    spies = profilers(system, ["gateway", "worker-preprocess"], profile_dir) if profile_dir else []
    try:
        stored, t_last, fps = wait_stored(system, base, total, poll_s)
    finally:
        stop_profilers(spies)
    after = cpu(system.pids())
    sent = gen.result(timeout=120)
    if not stored:
        raise SystemExit(f"bench: {system.design} stored nothing; see {system.logs}")
    e2e = stored / max(1e-9, t_last - sent["first_publish"])
    comp = cpu_delta(before, after)
    comp["loadgen"] = sent["cpu_s"]
    return {"fps": round(fps or e2e, 1), "fps_end_to_end": round(e2e, 1), "frames": total,
            "acked": sent["acked"], "stored": stored,
            "lost": sent["acked"] - stored, "cpu_s": comp}


def phase_naive(plan: Plan, workdir: Path, names: list[str]) -> dict:
    system = System("naive", workdir, names, plan.extra_workers)
    try:
        system.start()
        return throughput(system, plan, plan.naive_frames)
    finally:
        system.stop()


def real_time(system: System, probe: Probe, plan: Plan, devices: int, hold_s: float) -> dict:
    """``devices`` real-time devices for ``hold_s``: latency, loss, memory at that load."""
    system.quiesce()
    base = system.stored()
    boot_base = secrets.randbelow(2**32 - devices) + 1
    probe.measure(range(boot_base, boot_base + devices))
    before = cpu(system.pids())
    gen = loadgen(system, plan, devices, duration_s=hold_s, name=f"loadgen-rt{devices}",
                  boot_base=boot_base)
    time.sleep(max(0.0, hold_s - 2.0))
    mem = memory({**system.pids(), "loadgen": gen.pid})
    sent = gen.result(timeout=hold_s + 180)
    stored, _, _ = wait_stored(system, base, sent["acked"], poll_s=0.5, stall_s=20.0)
    comp = cpu_delta(before, cpu(system.pids()))
    comp["loadgen"] = sent["cpu_s"]
    time.sleep(1.0)  # the last events reach the probes
    lost = sent["published"] - stored
    lat = percentiles(probe.stored)
    return {"devices": devices, "hold_s": hold_s, "published": sent["published"],
            "acked": sent["acked"], "stored": stored, "lost": lost,
            "offered_fps": round(devices * plan.fps, 1),
            "latency_ms": lat, "latency_sse_ms": percentiles(probe.sse),
            "loadgen_lag_ms": sent["lag_ms"], "memory_mb": mem,
            "cpu_ms_per_frame": cpu_ms_per_frame(comp, stored),
            "ok": lost == 0 and lat["p99"] is not None and lat["p99"] < P99_LIMIT_MS}


def scale_search(system: System, probe: Probe, plan: Plan, fps_max: float) -> list[dict]:
    """Step the device count up by 1.25x while a step passes, then bisect; ``scale_steps`` max."""
    n = plan.scale_start or max(2, int(0.7 * fps_max / plan.fps))
    n = min(n, plan.scale_max)
    good, bad = 0, None
    steps: list[dict] = []
    for _ in range(plan.scale_steps):
        log(f"scale: {n} real-time devices for {plan.scale_hold_s:.0f} s")
        step = real_time(system, probe, plan, n, plan.scale_hold_s)
        steps.append(step)
        log(f"scale: {n} devices: lost {step['lost']}, p99 {step['latency_ms']['p99']} ms -> "
            f"{'pass' if step['ok'] else 'fail'}")
        if step["ok"]:
            good = max(good, n)
        else:
            bad = n if bad is None else min(bad, n)
        if bad is None:
            nxt = min(plan.scale_max, int(n * 1.25) + 1)
        else:
            nxt = (good + bad) // 2 if good else max(1, bad // 2)
        if nxt == n or nxt in (s["devices"] for s in steps) or (bad and bad - good <= max(2, bad // 20)):
            break
        n = nxt
    return steps


def phase_soundmon(plan: Plan, workdir: Path, names: list[str], profile_dir: Path | None) -> dict:
    system = System("soundmon", workdir, names, plan.extra_workers)
    system.env.update(plan.settings)
    probe: Probe | None = None
    try:
        system.start()
        probe = Probe(system.redis_port, system.http_port, TOKEN, plan.frame_ms)
        probe.start()
        log(f"soundmon: {plan.devices} devices x {plan.soundmon_frames} frames at full speed")
        out = throughput(system, plan, plan.soundmon_frames, profile_dir=profile_dir)
        log(f"soundmon: {out['fps']} frames/s, lost {out['lost']}")
        half = min(len(names), max(1, round(0.5 * out["fps"] / plan.fps)))
        log(f"latency: {half} real-time devices ({half * plan.fps:.0f} frames/s) for {plan.latency_s:.0f} s")
        probe.start_sse()
        out["latency"] = real_time(system, probe, plan, half, plan.latency_s)
        probe.stop_sse()
        log(f"latency: p50/p95/p99 {out['latency']['latency_ms']}")
        out["scale"] = scale_search(system, probe, plan, out["fps"])
        return out
    finally:
        if probe:
            probe.stop()
        system.stop()


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    versions = {}
    for name, argv in (("mosquitto", [mosq, "-h"]), ("redis", ["redis-server", "--version"])):
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            versions[name] = (text.stdout or text.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            versions[name] = "?"
    import psutil

    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], **versions}


def cpu_ms_per_frame(cpu_s: dict[str, float], frames: int) -> dict[str, float]:
    return {k: round(1000 * v / max(frames, 1), 3) for k, v in sorted(cpu_s.items())}


def run(plan: Plan) -> dict:
    started = datetime.now(UTC)
    # before anything starts: load left by something else (the bench's own load shows at the end)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = plan.results_dir if plan.profile else None
    # one pool of device accounts for every phase (the broker loads it at start)
    pool = max(plan.devices, plan.scale_max, 1)
    names = [f"d-{i:04d}" for i in range(pool)]
    workdir = Path(tempfile.mkdtemp(prefix="soundmon-bench-"))
    try:
        log(f"ceiling: {plan.devices} devices x {plan.ceiling_frames} frames -> mosquitto -> paho")
        ceiling = phase_ceiling(plan, workdir, names)
        log(f"ceiling: {ceiling['fps']} frames/s")
        log(f"naive: {plan.devices} devices x {plan.naive_frames} frames, one Celery task each")
        naive = phase_naive(plan, workdir, names)
        log(f"naive: {naive['fps']} frames/s, lost {naive['lost']}")
        sm = phase_soundmon(plan, workdir, names, profile_dir)
    except BaseException:
        Child.kill_all()
        log(f"failed; the processes' logs are in {workdir}")
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    passed = [s for s in sm["scale"] if s["ok"]]
    best = max(passed, key=lambda s: s["devices"]) if passed else None
    lat = sm["latency"]
    result = {
        "date": started.isoformat(timespec="seconds"),
        "mode": plan.mode,
        "command": plan.command,
        "machine": machine(),
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "frame_bytes": ceiling["frame_bytes"],
        "ceiling_fps": ceiling["fps"],
        "naive_fps": naive["fps"],
        "soundmon_fps": sm["fps"],
        "ratio_ceiling": round(sm["fps"] / ceiling["fps"], 3) if ceiling["fps"] else None,
        "ratio_naive": round(sm["fps"] / naive["fps"], 2) if naive["fps"] else None,
        "latency_ms": lat["latency_ms"],
        "latency_sse_ms": lat["latency_sse_ms"],
        "latency_devices": lat["devices"],
        "latency_offered_fps": lat["offered_fps"],
        "max_devices": best["devices"] if best else 0,
        "scale_hold_s": plan.scale_hold_s,
        "lost_frames": sm["lost"] + lat["lost"] + sum(s["lost"] for s in sm["scale"]),
        "memory_mb": (best or (sm["scale"] or [lat])[-1])["memory_mb"],
        "cpu_ms_per_frame": {
            "ceiling": cpu_ms_per_frame(ceiling["cpu_s"], ceiling["received"]),
            "naive": cpu_ms_per_frame(naive["cpu_s"], naive["stored"]),
            "soundmon": cpu_ms_per_frame(sm["cpu_s"], sm["stored"]),
        },
        "phases": {"ceiling": ceiling, "naive": naive,
                   "soundmon": {k: v for k, v in sm.items() if k not in ("latency", "scale")},
                   "latency": lat, "scale": sm["scale"]},
        "elapsed_s": round((datetime.now(UTC) - started).total_seconds(), 1),
    }
    result["machine"]["loadavg_at_start"] = load_at_start
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = report.targets(result)
    report.write(result, plan.results_dir, plan.docs_dir)
    return result


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every phase's clean-up


def main(plan: Plan) -> int:
    # SIGTERM, and SIGINT even when started in the background (where it is ignored), stop
    # the run cleanly: every process it started is stopped
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    # thousands of device connections: the load generator and mosquitto (which inherits
    # this limit) need a descriptor each, and paho two more per client
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else max(soft, 65536), hard))
    result = run(plan)
    print(report.summary(result), flush=True)
    return 0
