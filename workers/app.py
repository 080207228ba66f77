"""The Celery app: thin tasks over the pure preprocess and analysis modules.

Two queues, two worker processes (the user's design): ``soundmon worker preprocess`` computes
levels from raw frames (the DSP; it needs only the brokers, so it runs on any host),
``soundmon worker analyze`` calibrates and stores them, checks bounds and raises alerts (it
needs the store, so it runs on the store's host). Tasks are idempotent (see soundmon.store
and workers.analysis), acknowledged late, and retried with backoff on infrastructure
errors; a batch is never half-applied.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from celery import signals

from soundmon import events, tasknames
from soundmon.celeryconf import make_celery
from soundmon.settings import get_settings
from soundmon.store import LEVEL_COLUMNS, LevelRow, now_ms
from workers import kernels, outputs, rules, streamstate
from workers.analysis import analyse
from workers.preprocess import calibrate_rows, decode_batch, relative_batch, state_keys_needed

log = logging.getLogger("soundmon.workers")

settings = get_settings()
app = make_celery(settings, "workers")



@signals.worker_init.connect
def _warm_up_dsp(sender: Any = None, **_: Any) -> None:
    """Compile the DSP kernels (or load them from numba's cache) before the pool forks, so a
    preprocess worker's first batch does not wait for the compiler (docs/measurement.md)."""
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consuming = getattr(queues, "consume_from", None) or {}
    if consuming and tasknames.PREPROCESS_QUEUE not in consuming:
        return
    t0 = time.perf_counter()
    kernels.warm_up()
    log.info("DSP kernels ready in %.1f s", time.perf_counter() - t0)


#: retry infrastructure failures (database locked, broker hiccup) with capped backoff
RETRY = dict(autoretry_for=(Exception,), retry_backoff=True, retry_backoff_max=30,
             max_retries=20, retry_jitter=True)


def _analysis_input(row: LevelRow) -> dict[str, Any]:
    return {"device": row.device, "boot": row.boot, "seq": row.seq, "idx": row.idx, "t_ms": row.t_ms,
            "kind": row.kind, "rate": row.rate, "n": row.n, "laeq": row.laeq,
            "dominant_hz": row.dominant_hz, "flags": row.flags, "lafmax": row.lafmax,
            "duty": row.duty}


def _live(row: LevelRow) -> dict[str, Any]:
    d = row.api()
    d["device"] = row.device
    return d


@app.task(name=tasknames.PREPROCESS, **RETRY)
def preprocess(batch: str | list[list[Any]]) -> int:
    """The DSP of a batch: relative levels (K = 0), handed to the store step; returns how many.

    It needs nothing but the brokers (the ledger and the stream states are in Redis), so
    preprocess workers run on any host (docs/deploy.md). ``batch`` is the id of a batch in the
    handoff ledger (what the gateway sends; the store step forgets it there once its levels
    are stored), or the ``[device, recv_ms, frame bytes]`` entries themselves (a producer
    without the ledger).
    """
    batch_id = batch if isinstance(batch, str) else None
    entries: list[list[Any]] | None = None if batch_id is not None else batch  # type: ignore[assignment]
    if batch_id is not None:
        entries = outputs.handoff().take(batch_id)
        if entries is None:  # stored already (a redelivered or re-sent task), or given up
            return 0
    decoded = decode_batch(entries or [])
    if not decoded:
        if batch_id is not None:
            outputs.handoff().done(batch_id)  # nothing in it to store
        return 0
    client = outputs.redis_client()
    rows, new_states = relative_batch(decoded, streamstate.load(client, state_keys_needed(decoded)))
    # states first: once a level is visible, the stream can be continued from it
    streamstate.save(client, new_states)
    # argsrepr: otherwise Celery builds a repr of every level for its logs
    app.send_task(tasknames.STORE, args=[batch_id, [row_values(r) for r in rows],
                                         None if batch_id is not None else entries],
                  argsrepr=f"[{batch_id!r}, {len(rows)} levels]")
    return len(rows)


def row_values(row: LevelRow) -> list[Any]:
    """A level row as it travels in a task message (``LEVEL_COLUMNS`` order)."""
    return [getattr(row, c) for c in LEVEL_COLUMNS]


@app.task(name=tasknames.STORE, **RETRY)
def store_levels(batch_id: str | None, values: list[list[Any]],
                 entries: list[list[Any]] | None = None) -> int:
    """Calibrate, record, store, announce and analyse a batch's levels; returns how many were new.

    This is the step that needs the store (the device registry, calibration, alerts, the
    recordings), so it runs on the store's host, in the analyze worker. A batch in the
    handoff ledger is forgotten there only now, once its levels are stored: a task lost
    anywhere between the gateway and here is sent again by the gateways' sweep.
    """
    ledger = outputs.handoff()
    if batch_id is not None:
        entries = ledger.get(batch_id)
        if entries is None:  # stored already: a task sent twice
            return 0
    store = outputs.store()
    rows = [LevelRow(*v) for v in values]
    if entries:
        recordtasks.record(decode_batch(entries))  # raw audio, before anything is announced
    calibrate_rows(rows, store.calibrations({r.device for r in rows}))
    latest: dict[str, LevelRow] = {}
    for r in rows:
        if r.device not in latest or r.t_ms >= latest[r.device].t_ms:
            latest[r.device] = r
    # three short transactions, not one: with two analyze processes, one long hold of the
    # write lock made the other wait (p99 publish -> stored 280-440 ms against 185-210 ms)
    new = store.insert_levels(rows)
    store.touch_devices(latest.values())
    events.publish(outputs.redis_client(), "level", [_live(r) for r in rows])  # stored: say so
    announce(check_rules(store, [_analysis_input(r) for r in rows]))
    if batch_id is not None:
        ledger.done(batch_id)
    return new


@app.task(name=tasknames.ANALYZE, **RETRY)
def analyze(levels: list[dict[str, Any]]) -> int:
    """Check calibrated levels from another producer against the rules (``analyse_levels``);
    the pipeline's own levels are checked by ``store_levels``."""
    return analyse_levels(levels)


def analyse_levels(levels: list[dict[str, Any]]) -> int:
    """Check levels against the rules and announce the alert events; returns how many."""
    alert_events = check_rules(outputs.store(), levels)
    announce(alert_events)
    return len(alert_events)


def check_rules(store: Any, levels: list[dict[str, Any]]) -> list[int]:
    """Evaluate each device's rules, open and resolve alerts; returns the new alert events.

    The alert events are written with the alerts (``run_analyses``), in the caller's
    transaction if there is one; ``announce`` hands them to the notify queue after the commit.
    """
    s = get_settings()
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lv in levels:
        by_device[lv["device"]].append(lv)
    device_rules = rules.load_many(store, by_device, s)
    outcomes = store.run_analyses({
        device: (lambda hwm, st, open_, d=device, i=items, r=device_rules[device]: analyse(
            d, i, hwm, st, open_, r, now_ms(), owned=True))
        for device, items in by_device.items()})
    alert_events: list[int] = []
    for outcome in outcomes.values():
        for alert in [*outcome.opened, *outcome.resolved_alerts]:
            log.info("alert %d %s %s %s value=%s", alert.id, alert.device, alert.kind,
                     alert.state, alert.value)
        alert_events.extend(outcome.events)
    return alert_events


def announce(alert_events: list[int]) -> None:
    """Committed alert events to the notify queue (``workers.notify``: the live stream, MQTT,
    the user's channels and the alert's clip), one task for the batch, in order."""
    if alert_events:
        app.send_task(tasknames.NOTIFY, args=[alert_events])
    notify.resend_stale_events()


@app.task(name=tasknames.DEVICE_STATUS, **RETRY)
def device_status(device: str, status: dict[str, Any], recv_ms: int | None = None) -> None:
    """Record a status message (online/offline, firmware, sensor, rate) in the registry."""
    store = outputs.store()
    store.set_status(device, status, recv_ms or now_ms())
    info = store.device(device)
    if info is not None:
        events.publish(outputs.redis_client(), "device", info)


from workers import notify  # noqa: E402, I001  (registers the notify queue's tasks)
from workers import recordtasks  # noqa: E402  (registers the recording queue's tasks)
