"""The pipeline's Celery app asks for no task results unless a caller wants one."""

from __future__ import annotations

from typing import Any

import pytest

from soundmon.celeryconf import PolledRedisBackend, make_celery
from soundmon.settings import Settings


class _Spy:
    """Stands in for the result backend: records which task ids a sender would subscribe to."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def on_task_call(self, producer: Any, task_id: str) -> None:
        self.subscribed.append(task_id)

    def add_pending_result(self, *args: Any, **kw: Any) -> None:
        pass

    def remove_pending_result(self, *args: Any, **kw: Any) -> None:
        pass


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Any:
    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"), "t")
    app.conf.broker_url = "memory://localhost/"  # kombu's in-process transport: no broker needed
    spy = _Spy()
    monkeypatch.setattr(type(app), "backend", property(lambda self: spy))
    app.spy = spy
    return app


def test_send_task_subscribes_to_no_result_by_default(app: Any) -> None:
    result = app.send_task("soundmon.preprocess", args=["batch"])
    assert app.spy.subscribed == []
    with app.connection_for_read() as conn:
        msg = conn.default_channel.basic_get("preprocess")
        assert msg is not None and msg.headers["id"] == result.id
        assert msg.headers["ignore_result"] is True  # the worker stores no result either


def test_a_caller_that_wants_the_result_still_gets_it(app: Any) -> None:
    result = app.send_task("soundmon.analyse_file", args=["x"], ignore_result=False)
    with app.connection_for_read() as conn:
        msg = conn.default_channel.basic_get("preprocess")
        assert msg is not None and msg.headers["id"] == result.id
        assert msg.headers["ignore_result"] is False  # the worker stores it


def test_the_result_backend_subscribes_to_nothing_at_send_time() -> None:
    """The real backend (on a Redis that does not exist: touching it would fail) is not asked to
    subscribe the sender to the result's channel; the result is read by polling its key."""
    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0",
                               redis_url="redis://127.0.0.1:1/0"), "t")
    app.conf.broker_url = "memory://localhost/"
    backend = app.backend
    assert isinstance(backend, PolledRedisBackend)
    assert backend.connparams["port"] == 1  # the configured URL, not the defaults
    result = app.send_task("soundmon.analyse_file", args=["x"], ignore_result=False)
    assert backend.result_consumer._pubsub is None and not backend.result_consumer.subscribed_to
    del result  # AsyncResult.__del__ unsubscribes: with no subscription it needs no Redis
