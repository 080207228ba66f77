"""Contracts between services that never import each other."""

from __future__ import annotations

from soundmon import tasknames


def test_task_names_the_gateway_sends_exist_on_the_worker_app():
    """Every task name in soundmon.tasknames is registered on the worker app."""
    from workers.app import app

    for name in (tasknames.PREPROCESS, tasknames.STORE, tasknames.ANALYZE, tasknames.DEVICE_STATUS):
        assert name in app.tasks, name
        assert tasknames.ROUTES[name]["queue"] in (tasknames.PREPROCESS_QUEUE,
                                                   tasknames.ANALYZE_QUEUE)


def test_gateway_does_not_import_the_workers():
    """The gateway module tree imports nothing from workers/."""
    import ast
    from pathlib import Path

    for path in Path("gateway").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("workers"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("workers") for a in node.names), path


def test_pickle_is_never_accepted():
    """The Celery apps accept msgpack and JSON only."""
    from soundmon.celeryconf import celery_config
    from soundmon.settings import Settings

    conf = celery_config(Settings())
    assert "pickle" not in conf["accept_content"] and conf["task_serializer"] == "msgpack"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]


class _FakeRedis:
    """The few Redis calls of the preprocess task's stream states (a seam, not a broker)."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def mget(self, keys):
        return [self.kv.get(k) for k in keys]

    def register_script(self, source):
        from workers import streamstate

        assert source == streamstate.SAVE_SCRIPT  # SET each key to its value, with the TTL

        def run(keys, args):
            for k, v in zip(keys, args[1:], strict=True):
                self.kv[k] = v if isinstance(v, bytes) else str(v).encode()
        return run

    def publish(self, channel, message):
        return 0


class _FakeLedger:
    def __init__(self, batches):
        self.batches = dict(batches)
        self.done_ids: list[str] = []

    def take(self, batch_id):
        return self.batches.get(batch_id)

    def get(self, batch_id):
        return self.batches.get(batch_id)

    def done(self, batch_id):
        self.done_ids.append(batch_id)
        self.batches.pop(batch_id, None)


def test_preprocess_needs_no_store_and_the_store_step_finishes_the_batch(monkeypatch, tmp_path):
    """The preprocess task never opens the store (it runs on hosts without the data directory):
    it sends relative levels to the store step, which calibrates and stores them with the same
    numbers as the one-step ``process_batch`` and only then forgets the batch in the ledger."""
    from soundmon.store import DeviceCalibration, SQLiteStore
    from tests.helpers import hand_frame, sine
    from workers import app as worker_app
    from workers import outputs, recordtasks
    from workers.preprocess import decode_batch, process_batch

    t0 = 1_700_000_000_000
    frames = [["dev-a", t0 + 500 * i, hand_frame(i, 7, t0 + 500 * i, 8000, sine(1000, 3000, 8000, 4000))]
              for i in range(3)]
    ledger = _FakeLedger({"b1": frames})
    fake_redis = _FakeRedis()
    sent: list[tuple[str, list]] = []

    def no_store():
        raise AssertionError("the preprocess step opened the store")

    monkeypatch.setattr(outputs, "store", no_store)
    monkeypatch.setattr(outputs, "handoff", lambda: ledger)
    monkeypatch.setattr(outputs, "redis_client", lambda: fake_redis)
    monkeypatch.setattr(worker_app.app, "send_task",
                        lambda name, args=None, **kw: sent.append((name, args)))
    assert worker_app.preprocess.run("b1") == 3
    assert [name for name, _ in sent] == [tasknames.STORE] and ledger.done_ids == []
    batch_id, values, entries = sent[0][1]
    assert batch_id == "b1" and entries is None and all(v[15] == 0.0 for v in values)  # k_db = 0

    store = SQLiteStore(tmp_path / "soundmon.db")
    store.set_calibration("dev-a", 120.0)
    recorded: list[int] = []
    monkeypatch.setattr(outputs, "store", lambda: store)
    monkeypatch.setattr(recordtasks, "record", lambda decoded: recorded.append(len(decoded)))
    assert worker_app.store_levels.run(batch_id, values, entries) == 3
    assert ledger.done_ids == ["b1"] and recorded == [3]
    expected, _ = process_batch(decode_batch(frames), {"dev-a": DeviceCalibration(120.0, True, None)})
    stored = store.levels("dev-a", 0, 2**62)
    assert [(r.seq, r.laeq, r.lafmax, r.k_db, r.flags) for r in stored] == \
        [(r.seq, r.laeq, r.lafmax, r.k_db, r.flags) for r in expected]
    assert worker_app.store_levels.run(batch_id, values, entries) == 0  # sent twice: nothing more
