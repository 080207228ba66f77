"""Contracts between services that never import each other."""

from __future__ import annotations

from soundmon import tasknames


def test_task_names_the_gateway_sends_exist_on_the_worker_app():
    """Every task name in soundmon.tasknames is registered on the worker app."""
    from workers.app import app

    for name in (tasknames.PREPROCESS, tasknames.ANALYZE, tasknames.DEVICE_STATUS):
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
