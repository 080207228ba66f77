"""Dependency checks behind ``GET /api/health``: store, redis, mqtt, gateway, workers, handoff.

Each check is a coroutine that returns None when the dependency is fine and raises
``CheckFailed`` with a short reason otherwise; ``Health.run`` runs them concurrently, each
bounded by about a second, so the endpoint answers fast even when everything is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from redis.exceptions import RedisError

from soundmon import events, handoff
from soundmon.settings import Settings
from soundmon.store import SQLiteStore

log = logging.getLogger(__name__)

WORKER_ROLES = ("preprocess@", "analyze@")  # node-name prefixes, one worker of each needed
WORKER_CACHE_S = 5.0  # a Celery ping costs a broadcast; health may be polled every second
WORKER_WAIT_S = 1.5  # ping timeout (1 s) plus the broker round trip


class CheckFailed(Exception):
    """A dependency is not usable; ``str()`` is the short reason shown in ``failing``."""


def short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def celery_pinger(settings: Settings) -> Callable[[], list[str]]:
    """A blocking function returning the node names of the workers that answer a ping.

    The app must share the workers' serializers: they answer control messages with their
    ``task_serializer`` (msgpack), which a bare ``Celery(broker=...)`` refuses to decode.
    """
    app: Any = None

    def ping() -> list[str]:
        nonlocal app
        if app is None:
            # only when health is asked: the API itself never needs Celery
            from soundmon.celeryconf import make_celery

            app = make_celery(settings, main="soundmon-dashboard")
        replies = app.control.ping(timeout=1.0) or []
        return sorted(name for reply in replies for name in reply)

    return ping


class WorkerPing:
    """Runs the blocking Celery ping in a daemon thread and keeps its outcome for ``ttl_s``."""

    def __init__(self, ping: Callable[[], list[str]], ttl_s: float = WORKER_CACHE_S) -> None:
        self.ping = ping
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._future: Future[list[str]] | None = None
        self._done_at = 0.0

    def _current(self) -> Future[list[str]]:
        with self._lock:
            fut = self._future
            age_s = time.monotonic() - self._done_at
            if fut is None or (fut.done() and age_s > self.ttl_s):
                fut = self._future = Future()
                threading.Thread(target=self._run, args=(fut,), name="soundmon-worker-ping",
                                 daemon=True).start()
            return fut

    def _run(self, fut: Future[list[str]]) -> None:
        try:
            names = self.ping()
        except Exception as exc:  # any broker or network error is a failed check
            self._done_at = time.monotonic()
            fut.set_exception(exc)
        else:
            self._done_at = time.monotonic()
            fut.set_result(names)

    async def names(self, wait_s: float = WORKER_WAIT_S) -> list[str]:
        fut = self._current()
        try:
            return await asyncio.to_thread(fut.result, wait_s)
        except TimeoutError:
            raise CheckFailed(f"no ping reply within {wait_s:g} s (broker slow or down?)") from None
        except Exception as exc:
            raise CheckFailed(f"broker: {short(exc)}") from exc


def workers_reason(names: list[str]) -> str | None:
    """Why the answering workers are not enough, or None when every role answered."""
    missing = [role for role in WORKER_ROLES if not any(n.startswith(role) for n in names)]
    if not missing:
        return None
    answered = ", ".join(names) if names else "none"
    return f"no {' or '.join(r + '*' for r in missing)} worker answered (answered: {answered})"


class Health:
    """The six checks over one app's store, Redis client and settings."""

    def __init__(self, settings: Settings, store: SQLiteStore, redis_client: Any) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis_client
        self.workers = WorkerPing(celery_pinger(settings))

    async def run(self) -> tuple[list[str], dict[str, str]]:
        checks: dict[str, Callable[[], Awaitable[None]]] = {
            "store": self.check_store,
            "redis": self.check_redis,
            "mqtt": self.check_mqtt,
            "gateway": self.check_gateway,
            "workers": self.check_workers,
            "handoff": self.check_handoff,
        }
        results = await asyncio.gather(*(c() for c in checks.values()), return_exceptions=True)
        ok: list[str] = []
        failing: dict[str, str] = {}
        for name, result in zip(checks, results, strict=True):
            if result is None:
                ok.append(name)
            elif isinstance(result, CheckFailed):
                failing[name] = str(result)
            else:
                log.error("health check %s crashed", name, exc_info=result)
                failing[name] = f"check crashed: {type(result).__name__}: {short(result)}"
        return ok, failing

    async def check_store(self) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), 2.0)
        except TimeoutError:
            raise CheckFailed("no answer within 2 s (database locked?)") from None
        except sqlite3.Error as exc:
            raise CheckFailed(f"sqlite: {short(exc)}") from exc

    async def check_redis(self) -> None:
        if self.redis is None:
            raise CheckFailed("no redis client configured")
        try:
            await asyncio.wait_for(self.redis.ping(), 1.0)
        except TimeoutError:
            raise CheckFailed("no PING reply within 1 s") from None
        except (RedisError, OSError) as exc:
            raise CheckFailed(short(exc)) from exc

    async def check_mqtt(self) -> None:
        host, port = self.settings.mqtt_host, self.settings.mqtt_port
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except TimeoutError:
            raise CheckFailed(f"{host}:{port}: no TCP answer within 1 s") from None
        except OSError as exc:
            # asyncio words a refusal "Connect call failed"; the errno says why
            why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else short(exc)
            raise CheckFailed(f"{host}:{port}: {why}") from exc
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass  # the broker may reset a connection that never sent CONNECT

    async def check_gateway(self) -> None:
        if self.redis is None:
            raise CheckFailed("no redis client configured")
        pattern = events.GATEWAY_HEARTBEAT_PREFIX + "*"
        try:
            async with asyncio.timeout(1.0):
                async for _key in self.redis.scan_iter(match=pattern, count=100):
                    return
        except TimeoutError:
            raise CheckFailed("redis did not answer within 1 s") from None
        except (RedisError, OSError) as exc:
            raise CheckFailed(f"redis: {short(exc)}") from exc
        raise CheckFailed(f"no gateway heartbeat ({pattern}) in redis")

    async def check_workers(self) -> None:
        reason = workers_reason(await self.workers.names())
        if reason:
            raise CheckFailed(reason)

    async def check_handoff(self) -> None:
        """Fails once a batch was set aside after failing in the workers ``MAX_TRIES`` times."""
        if self.redis is None:
            raise CheckFailed("no redis client configured")
        try:
            given_up = await asyncio.wait_for(self.redis.hlen(handoff.DEAD_KEY), 1.0)
        except TimeoutError:
            raise CheckFailed("redis did not answer within 1 s") from None
        except (RedisError, OSError) as exc:
            raise CheckFailed(f"redis: {short(exc)}") from exc
        if given_up:
            raise CheckFailed(
                f"{given_up} batch(es) failed {handoff.MAX_TRIES} times in the workers and were "
                f"set aside in redis {handoff.DEAD_KEY} (the worker log says why)")
