"""The notify queue: alert events to channels, with retries, reminders and a delivery log.

Flow (docs/notifications.md):

1. ``SQLiteStore.run_analyses`` writes an ``opened``/``resolved`` alert event in the same
   transaction as the alert (an outbox), and the store step sends ``soundmon.notify`` with
   the new event ids (one task per batch). ``notify`` also sends the alert's clip task to
   the recording queue for each ``opened`` and ``resolved``. Events no task took up (an
   analyze worker killed after its commit) are sent again by the next analyze task after
   ``STALE_EVENT_MS``.
2. ``notify`` routes each event: the built-in ``live`` and ``mqtt`` channels plus every stored
   channel whose routing takes it. It writes one delivery row per channel (once: a unique
   key), sends the built-ins at once, in order, and one ``soundmon.deliver`` task per other
   channel, so a slow or dead webhook never holds up the rest.
3. ``deliver`` makes one attempt under a short lease (two copies of a redelivered task never
   send at once), records the outcome, and on failure retries after base, 2 base, 4 base ...
   seconds until ``notify_max_attempts``, then marks the delivery ``failed``.
4. After ``opened``, ``remind`` runs every ``reminder_s`` while the alert stays open and
   unacknowledged.

Delivery is at least once: a worker killed after the receiver took a message but before the
outcome was recorded sends it again, with the same ``delivery`` id (webhook body and
``X-Soundmon-Delivery`` header, e-mail Message-ID) so the receiver can drop the copy.
"""

from __future__ import annotations

import logging
from typing import Any

from soundmon import events, notifiers, tasknames
from soundmon.settings import get_settings
from soundmon.store import Alert, now_ms
from workers import outputs, rules
from workers.app import RETRY, app

log = logging.getLogger("soundmon.notify")

#: an event older than this that no notify task took up is sent again
STALE_EVENT_MS = 30_000
#: the built-in channels and the events they carry
BUILTIN_EVENTS = {"live": ("opened", "reminder", "resolved"), "mqtt": ("opened", "resolved")}


def channel_key(channel_id: int) -> str:
    return f"channel:{channel_id}"


def route(alert: Alert, event: str, channels: list[dict[str, Any]]) -> list[str]:
    """The channels (keys) an event goes to: built-ins first, then the stored ones in order."""
    keys = [k for k, evs in BUILTIN_EVENTS.items() if event in evs]
    return keys + [channel_key(c["id"]) for c in channels if notifiers.wants(c, alert, event)]


def _send(key: str, alert: Alert, event: str, delivery_id: int) -> None:
    if key == "live":
        events.publish(outputs.redis_client(), "alert", notifiers.protocol_payload(alert, event))
    elif key == "mqtt":
        if not outputs.publish_alert(alert.device, notifiers.protocol_payload(alert, event)):
            raise notifiers.DeliveryError("the MQTT broker did not confirm the alert message")
    else:
        channel = outputs.store().channel(int(key.split(":", 1)[1]))
        if channel is None:
            raise notifiers.DeliveryError("the channel was deleted")
        notifiers.send(channel, alert, event, str(delivery_id), get_settings().notify_timeout_s)


def attempt(delivery_id: int) -> tuple[str, float]:
    """One attempt at a delivery: ("sent"|"failed"|"done", 0), or ("retry", after seconds)."""
    s, store = get_settings(), outputs.store()
    state, wait_ms = store.claim_delivery(delivery_id, int((s.notify_timeout_s + 5) * 1000))
    if state == "busy":
        return "retry", wait_ms / 1000 + 0.1
    if state != "ok":
        return "done", 0.0
    d = store.delivery(delivery_id)
    ev = store.alert_event(d["event_id"]) if d else None
    alert = store.alert(ev["alert_id"]) if ev else None
    if d is None or ev is None or alert is None:
        store.finish_delivery(delivery_id, "failed", "the alert is gone")
        return "failed", 0.0
    try:
        _send(d["channel"], alert, ev["event"], delivery_id)
    except Exception as exc:  # noqa: BLE001 - any failure of a channel is recorded and retried
        error = str(exc)[:500] or type(exc).__name__
        if d["attempts"] >= s.notify_max_attempts:
            store.finish_delivery(delivery_id, "failed", error)
            log.warning("delivery %d (%s, alert %d %s) failed after %d attempts: %s",
                        delivery_id, d["channel"], alert.id, ev["event"], d["attempts"], error)
            return "failed", 0.0
        store.finish_delivery(delivery_id, "pending", error)
        backoff = s.notify_retry_base_s * 2 ** (d["attempts"] - 1)
        log.info("delivery %d (%s) attempt %d failed, retry in %.1f s: %s", delivery_id,
                 d["channel"], d["attempts"], backoff, error)
        return "retry", backoff
    store.finish_delivery(delivery_id, "sent")
    log.info("alert %d %s sent to %s (delivery %d)", alert.id, ev["event"], d["channel"],
             delivery_id)
    return "sent", 0.0


@app.task(name=tasknames.NOTIFY, bind=True, **RETRY)
def notify(self: Any, event_ids: list[int]) -> int:
    """Route alert events to their channels (in order) and start their deliveries."""
    store, s = outputs.store(), get_settings()
    channels = store.channels()
    started = 0
    for eid in event_ids:
        ev = store.alert_event(eid)
        if ev is None or ev["planned"]:
            continue  # a redelivered task: done already
        alert = store.alert(ev["alert_id"])
        if alert is None:
            store.mark_event_planned(eid)
            continue
        if ev["event"] != "opened" and not store.event_planned(alert.id, "opened"):
            # its "opened" is still with another notify process: keep open before resolved
            raise self.retry(countdown=1.0)
        for d in store.plan_deliveries(eid, route(alert, ev["event"], channels)):
            if d["channel"] in BUILTIN_EVENTS:  # fast and ordered: open before resolved
                outcome, after = attempt(d["id"])
                if outcome == "retry":
                    app.send_task(tasknames.DELIVER, args=[d["id"]], countdown=after)
            elif not d["dispatched"]:
                app.send_task(tasknames.DELIVER, args=[d["id"]])
                store.mark_dispatched(d["id"])
            started += 1
        if ev["event"] in ("opened", "resolved"):
            # the alert's audio clip, after the post-roll: a first cut when it opens, the whole
            # clip when it resolves (workers.recordtasks.clip). Sent from here, the outbox of
            # alert events, rather than from the store step: an alert storm's clip tasks then
            # never hold up the levels, and a crash after the commit loses no clip either.
            app.send_task(tasknames.CLIP, args=[alert.id], countdown=s.clip_postroll_s + 2)
        if ev["event"] == "opened" and alert.ended_ms is None:
            reminder_s = rules.load(store, alert.device, s).reminder_s
            if reminder_s > 0:
                app.send_task(tasknames.REMIND, args=[alert.id, 1], countdown=reminder_s)
        store.mark_event_planned(eid)
    return started


@app.task(name=tasknames.DELIVER, bind=True, max_retries=None, autoretry_for=(Exception,),
          retry_backoff=True, retry_backoff_max=30, retry_jitter=True)
def deliver(self: Any, delivery_id: int) -> str:
    """One attempt on one channel; retried with exponential backoff (see ``attempt``).

    Channel failures are counted in the delivery log; an infrastructure error (the database
    locked, say) only retries the task, so no delivery is left behind half-done.
    """
    outcome, after = attempt(delivery_id)
    if outcome == "retry":
        raise self.retry(countdown=after)
    return outcome


@app.task(name=tasknames.REMIND, **RETRY)
def remind(alert_id: int, n: int) -> bool:
    """Reminder ``n`` of an alert still open and unacknowledged; schedules the next one."""
    store = outputs.store()
    alert = store.alert(alert_id)
    if alert is None or alert.state != "open":
        return False  # acknowledged or resolved: no more reminders
    eid = store.add_alert_event(alert_id, "reminder", n)
    if not eid:
        return False  # a copy of this task ran already
    app.send_task(tasknames.NOTIFY, args=[[eid]])
    reminder_s = rules.load(store, alert.device, get_settings()).reminder_s
    if reminder_s > 0:
        app.send_task(tasknames.REMIND, args=[alert_id, n + 1], countdown=reminder_s)
    return True


_last_sweep = {"ms": 0}


def resend_stale_events() -> int:
    """Send events again that no notify task took up (the analyze task calls this; it looks
    at most every ``STALE_EVENT_MS``)."""
    if now_ms() - _last_sweep["ms"] < STALE_EVENT_MS:
        return 0
    _last_sweep["ms"] = now_ms()
    store = outputs.store()
    stale = store.unplanned_events(now_ms() - STALE_EVENT_MS)
    if stale:
        log.warning("sending %d alert event(s) again that were never routed", len(stale))
        app.send_task(tasknames.NOTIFY, args=[stale])
    return len(stale)
