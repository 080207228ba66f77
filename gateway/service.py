"""The gateway process: MQTT in (paho, QoS 1, persistent session), Celery batches out.

* MQTT v5, ``clean_start=False`` and a long session expiry under a fixed client id, so the
  broker keeps queueing frames for us while we are down and redelivers what we had not
  acknowledged.
* ``manual_ack``: a frame is acknowledged only after its batch was accepted, that is kept in
  the handoff ledger (below; see ``gateway.intake``). Receive-maximum bounds how many
  unacknowledged frames the broker sends us, and so the largest batch.
* Subscriptions are (re)made in ``on_connect``; ``--share-group`` joins ``$share/<group>/``
  so several gateways split the devices' frames.
* Batches wait up to ``SOUNDMON_BATCH_MAX_WAIT_MS`` to fill while the workers keep up; while
  tasks queue in the broker (Redis: preprocess or store tasks), the window grows up to 250 ms
  (``gateway.intake.batch_wait_s``), so a backlog is worked off in full batches.
* Each batch is written to the handoff ledger in Redis (``soundmon.handoff``) before its
  task is sent, and that write is what lets its frames be acknowledged: a task lost on the
  way (a worker killed between kombu's BRPOP and its unacked bookkeeping, a broker crash) is
  sent again by the sweep this process runs every 2 s, one gateway at a time.
* Counters go to Redis every 2 s (``/api/gateway``) with a heartbeat key that expires when
  the gateway dies (``/api/health``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import click
import paho.mqtt.client as mqtt
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.intake import ACK_NOW, Batch, Intake, batch_wait_s
from soundmon import events, tasknames
from soundmon.celeryconf import make_celery
from soundmon.handoff import Handoff
from soundmon.settings import Settings, get_settings

log = logging.getLogger("soundmon.gateway")

#: RabbitMQ: give up on a publisher confirm after this long (a broker alarm or a queue without a
#: leader would otherwise hang the flusher forever); the batch is retried and its frames stay
#: unacknowledged in MQTT meanwhile. Redis ignores it.
CONFIRM_TIMEOUT_S = 10.0

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue for a week of downtime
HEARTBEAT_S = 2.0


class Gateway:
    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        self.s = settings
        self.celery = celery_app or make_celery(settings, "gateway")
        self.intake = Intake(settings.mqtt_prefix, settings.batch_max_frames)
        self.quit = threading.Event()  # asked to stop (signal)
        self.stop = threading.Event()  # the worker threads stop (after draining)
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"soundmon-gateway-{settings.gateway_id}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.mqtt_username:
            self.client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        self.handoff = Handoff(self._redis, settings.visibility_timeout_s)
        self._reported: dict[str, int] = {}
        # the Celery broker, when it is Redis: how many batches wait for a worker (LLEN)
        self._broker: redis.Redis | None = None
        if settings.broker_url.startswith(("redis://", "rediss://")):
            self._broker = redis.Redis.from_url(settings.broker_url, socket_timeout=0.5,
                                                socket_connect_timeout=0.5)

    # ---- MQTT callbacks (network thread) -----------------------------------------------
    def topics(self) -> list[str]:
        base = [f"{self.s.mqtt_prefix}/v1/+/frame", f"{self.s.mqtt_prefix}/v1/+/status"]
        if self.s.share_group:
            return [f"$share/{self.s.share_group}/{t}" for t in base]
        return base

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connection refused: %s", reason)
            return
        self.intake.new_session()
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics()])
        log.info("connected to mqtt://%s:%d (session present: %s), subscribed to %s",
                 self.s.mqtt_host, self.s.mqtt_port, flags.session_present, self.topics())

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("subscription refused by the broker: %s", failed)
            return
        self.connected.set()  # "connected" means subscribed: frames can flow

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        if not self.quit.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        recv_ms = int(time.time() * 1000)
        verdict = self.intake.offer(msg.topic, msg.payload, msg.mid, recv_ms, time.monotonic())
        if verdict == ACK_NOW and msg.qos:
            client.ack(msg.mid, msg.qos)

    # ---- flusher thread ----------------------------------------------------------------
    def send(self, batch: Batch) -> None:
        """Hand a batch over; raises if it was not accepted (its frames stay unacknowledged).

        Accepted means written to the handoff ledger. A task that cannot be sent after that is
        left to the sweep, and the error is raised all the same so the flusher backs off.
        """
        for p in batch.statuses:  # first: once the frames are in the ledger, all is accepted
            self.celery.send_task(tasknames.DEVICE_STATUS, args=p.body,
                                  confirm_timeout=CONFIRM_TIMEOUT_S)
        if batch.frames:
            batch_id = self.handoff.put([p.body for p in batch.frames])
            batch.accepted = True
            try:
                self.send_preprocess(batch_id)
            except Exception:
                self.handoff.due_now(batch_id)
                raise

    def send_preprocess(self, batch_id: str) -> None:
        self.celery.send_task(tasknames.PREPROCESS, args=[batch_id],
                              confirm_timeout=CONFIRM_TIMEOUT_S)

    def queued_tasks(self) -> int:
        """Tasks in the preprocess and analyze queues that no worker has taken yet (0 if
        unknown): a batch waits behind the DSP and then behind the store step, and a backlog
        in either is worked off faster in fuller batches (``gateway.intake.batch_wait_s``).

        Cheap on Redis (two LLEN in one round trip; asked before every batch). On RabbitMQ it
        is not asked here, except by the sweep (``sweep_backlog``)."""
        if self._broker is None:
            return 0
        try:
            return self._queue_depth(self._broker)
        except redis.RedisError:
            return 0  # the send below finds out whether the broker is there

    @staticmethod
    def _queue_depth(broker: redis.Redis) -> int:
        pipe = broker.pipeline(transaction=False)
        for q in (tasknames.PREPROCESS_QUEUE, tasknames.ANALYZE_QUEUE):
            pipe.llen(q)
        return sum(int(n) for n in pipe.execute())

    def sweep_backlog(self) -> int:
        """Tasks ready in the preprocess and analyze queues (a batch's store step waits in the
        latter), on either broker (0 if unknown); the sweep asks this only when some batch is
        overdue, so a RabbitMQ round trip here is rare."""
        try:
            if self._broker is not None:
                return self._queue_depth(self._broker)
            with self.celery.connection_for_read() as conn:
                return sum(int(conn.default_channel.queue_declare(q, passive=True).message_count)
                           for q in (tasknames.PREPROCESS_QUEUE, tasknames.ANALYZE_QUEUE))
        except Exception as exc:  # noqa: BLE001 - unknown backlog: sweep, duplicates are harmless
            log.debug("could not read the queue depths: %s", exc)
            return 0

    def flush_loop(self) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            wait_s = batch_wait_s(self.s.batch_max_wait_ms / 1000, self.queued_tasks())
            batch = self.intake.wait_batch(wait_s, time.monotonic, self.stop)
            if batch is None:
                continue
            try:
                self.send(batch)
            except (OperationalError, OSError, redis.RedisError) as exc:
                if batch.accepted:  # in the ledger: acknowledge, the sweep sends its task
                    self._ack(self.intake.committed(batch))
                else:
                    self.intake.requeue(batch, time.monotonic())
                log.error("Celery broker did not accept a batch of %d (%s); %s, retrying in "
                          "%.1f s", len(batch), exc,
                          "it is kept in the handoff ledger" if batch.accepted
                          else "its frames stay unacknowledged", backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            self._ack(self.intake.committed(batch))

    def _ack(self, mids: list[int]) -> None:
        for mid in mids:
            self.client.ack(mid, 1)

    def report_loop(self) -> None:
        key = events.GATEWAY_HEARTBEAT_PREFIX + self.s.gateway_id
        while not self.stop.wait(HEARTBEAT_S):
            self.report(key)
            try:
                self.handoff.sweep(self.send_preprocess, backlog=self.sweep_backlog)
            except (OperationalError, OSError, redis.RedisError) as exc:
                log.warning("handoff sweep failed (%s); trying again in %.0f s", exc, HEARTBEAT_S)

    def report(self, key: str) -> None:
        snap = self.intake.snapshot()
        try:
            pipe = self._redis.pipeline()
            for name, value in snap.items():
                if name == "queued":
                    continue
                delta = value - self._reported.get(name, 0)
                if delta:
                    pipe.hincrby(events.GATEWAY_STATS_KEY, f"{self.s.gateway_id}:{name}", delta)
            snap["connected"] = int(self.connected.is_set())
            pipe.set(key, json.dumps(snap), ex=int(HEARTBEAT_S * 5))
            pipe.execute()
            self._reported = {k: v for k, v in snap.items() if k not in ("queued", "connected")}
        except redis.RedisError as exc:
            log.warning("cannot report gateway counters to Redis: %s", exc)

    # ---- lifecycle ---------------------------------------------------------------------
    def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.s.max_inflight
        self.client.connect_async(self.s.mqtt_host, self.s.mqtt_port, keepalive=30,
                                  clean_start=False, properties=props)
        threads = [threading.Thread(target=self.flush_loop, name="flush", daemon=True),
                   threading.Thread(target=self.report_loop, name="report", daemon=True)]
        for t in threads:
            t.start()
        self.client.loop_start()
        log.info("gateway %s started: batches of up to %d frames or %d ms", self.s.gateway_id,
                 self.s.batch_max_frames, self.s.batch_max_wait_ms)
        try:
            while not self.quit.wait(0.5):
                pass
        finally:
            # Drain what is queued so a clean stop leaves nothing half-done (anything left
            # unacknowledged is redelivered by the broker anyway).
            deadline = time.monotonic() + 5
            while self.intake.queued() and time.monotonic() < deadline and self.connected.is_set():
                time.sleep(0.05)
            self.stop.set()
            for t in threads:
                t.join(timeout=5)
            self.report(events.GATEWAY_HEARTBEAT_PREFIX + self.s.gateway_id)
            self._redis.delete(events.GATEWAY_HEARTBEAT_PREFIX + self.s.gateway_id)
            self.client.disconnect()
            self.client.loop_stop()
            log.info("gateway stopped: %s", self.intake.snapshot())


@click.command("gateway")
@click.option("--mqtt", "mqtt_addr", default=None, help="MQTT broker HOST:PORT.")
@click.option("--share-group", default=None,
              help="Join a shared subscription group so several gateways split the load.")
@click.option("--id", "gateway_id", default=None, help="Gateway id (fixes the MQTT client id).")
def gateway_command(mqtt_addr: str | None, share_group: str | None,
                    gateway_id: str | None) -> None:
    """Forward device frames from MQTT to the Celery preprocess queue, in batches."""
    if mqtt_addr:
        host, _, port = mqtt_addr.rpartition(":")
        os.environ["SOUNDMON_MQTT_HOST"] = host or "127.0.0.1"
        os.environ["SOUNDMON_MQTT_PORT"] = port
    if share_group:
        os.environ["SOUNDMON_SHARE_GROUP"] = share_group
    if gateway_id:
        os.environ["SOUNDMON_GATEWAY_ID"] = gateway_id
    get_settings.cache_clear()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    gw = Gateway(get_settings())
    signal.signal(signal.SIGTERM, lambda *_: gw.quit.set())
    try:
        gw.run()
    except KeyboardInterrupt:
        pass
