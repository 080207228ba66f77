"""Celery configuration shared by the producer (gateway) and the consumers (workers).

Reliability choices, each backed by shared/reliability.md section 1:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged after it ran, and
  a worker killed mid-task puts it back, so accepted frames survive a crash. Tasks are
  idempotent (the store ignores a (device, boot, seq) it already has), so a redelivery only
  costs time.
* msgpack (binary frames stay bytes) or JSON; pickle is never accepted.
* Redis ``visibility_timeout`` set in all the places kombu reads it, and the unacked-restore
  sweep tightened from about 100 s to a few seconds so a killed worker's batches come back fast.
* ``task_publish_retry`` with a longer policy than the 0.4 s default; the gateway still treats
  a failed publish as "not accepted" and does not acknowledge the MQTT messages.
* RabbitMQ (``SOUNDMON_BROKER_URL=amqp://...``): durable queues, persistent messages and
  publisher confirms, so a batch counts as accepted once RabbitMQ has it on disk.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend

from soundmon import tasknames
from soundmon.settings import Settings


def celery_config(settings: Settings) -> dict:
    vt = settings.visibility_timeout_s
    transport: dict = {}
    if settings.broker_url.startswith(("redis", "rediss")):
        transport = {
            "visibility_timeout": vt,
            # restore unacked messages every few seconds instead of roughly every 100 s
            "unacked_restore_interval": max(1, min(5, vt // 4)),
            "unacked_restore_throttle": 1,
            # the sweep runs under a Redis lock; a worker killed while holding it would block
            # every sweep for the default 300 s, so let the lock lapse after 15 s
            "unacked_mutex_expire": 15,
        }
    amqp = settings.broker_url.startswith(("amqp", "pyamqp"))
    if amqp:
        transport = rabbitmq_transport_options()
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": vt} if transport else {},
        "visibility_timeout": vt,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "msgpack",
        "result_serializer": "json",
        "accept_content": ["msgpack", "json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_routes": tasknames.ROUTES,
        "task_default_queue": tasknames.PREPROCESS_QUEUE,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 10,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 1.0,
        },
        # each task carries a whole batch; a small prefetch keeps redelivery cheap
        "worker_prefetch_multiplier": 2,
        # No task events unless someone watches: Flower turns them on in the workers itself
        # (its enable_events, every few seconds while it runs). Always on, they cost each
        # worker 7-9 % of its CPU (three event messages per task; py-spy, real-time load).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_soft_shutdown_timeout": 10.0,
        # Keep a task running through a broker connection loss and let it finish: on Redis a
        # cancelled task is acknowledged once the connection is back, and its batch is lost
        # (seen in tests/integration/test_broker_crash.py). A finished task stored its rows.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "result_expires": 3600,
        **(rabbitmq_config() if amqp else {}),
    }


def rabbitmq_transport_options() -> dict:
    """RabbitMQ: the broker confirms each publish once the message is on disk.

    ``send_task`` then returns only after that confirm, so the gateway acknowledges MQTT frames
    only for batches RabbitMQ has promised to keep (shared/reliability.md 1.4). It costs a
    round trip per publish (about 2 ms here), paid once per batch of up to 512 frames.
    """
    return {"confirm_publish": True}


def rabbitmq_config() -> dict:
    """Durable classic queues and persistent messages: with confirms, nothing confirmed is lost.

    RabbitMQ confirms a persistent message routed to a durable queue once it is written and
    fsynced, so a SIGKILLed broker still has every batch the gateway was told is queued
    (tests/integration/test_rabbitmq.py). Quorum queues were tried first and rejected for the
    single-node setup: on Debian's RabbitMQ 3.10 a quorum queue created shortly before a
    SIGKILL came back without a leader and every publish waited forever (the same symptom as
    rabbitmq-server#10070). Quorum queues are for clusters of three nodes (docs/deploy.md).
    """
    return {
        "task_default_queue_type": "classic",
        "task_create_missing_queue_type": "classic",
        "task_default_delivery_mode": "persistent",
    }


class SoundmonCelery(Celery):
    """Celery whose ``send_task`` asks for no result unless the caller says so.

    Celery's ``send_task`` does not know the task's ``ignore_result`` (it sends by name), so
    by default the Redis result backend subscribes the sender to the task's result channel,
    ``celery-task-meta-<id>``, and never unsubscribes: one more channel in Redis and in the
    sender's set for every batch, a leak of about 150,000 channels an hour per gateway at
    40 batches/s, and a Redis command per task. No pipeline task has a result anyone reads;
    the dashboard's long tasks (``dashboard.routes.tasks``) pass ``ignore_result=False``.
    """

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        options.setdefault("ignore_result", True)
        return super().send_task(name, *args, **options)


class PolledRedisBackend(RedisBackend):
    """Celery's Redis result backend, without the subscription when a task is sent.

    A sender that asks for a result (``ignore_result=False``: the dashboard's long tasks) is
    subscribed by the stock backend to the task's result channel at once, in case it waits
    on ``get()``. Nothing in soundmon waits: ``GET /api/tasks/{id}`` reads the result's key.
    The subscription was only a cost, and with Celery 5.6 a hazard: when the result object is
    garbage-collected after Redis went away, unsubscribing retried for 20 s in whichever thread
    ran the collector, then raised. ``get()`` still works: it subscribes when it is called.
    """

    def __init__(self, app: Celery, url: str | None = None, **kwargs: Any) -> None:
        # given as the app's backend class, it gets no URL: the configured one is meant
        super().__init__(app=app, url=url or app.conf.result_backend, **kwargs)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass


def make_celery(settings: Settings, main: str = "soundmon") -> Celery:
    config = celery_config(settings)
    redis_results = config["result_backend"].startswith(("redis://", "rediss://", "unix://"))
    app = SoundmonCelery(main)
    if redis_results:
        # Celery's hook for the backend class, by name (its URL parser takes no class)
        app.backend_cls = f"{__name__}:{PolledRedisBackend.__name__}"
    app.conf.update(config)
    return app
