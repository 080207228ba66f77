"""The gateway's batch window: short while the workers keep up, longer while batches queue."""

from __future__ import annotations

import pytest

from gateway.intake import BACKLOG_MAX_WAIT_S, batch_wait_s


def test_idle_queue_keeps_the_configured_window():
    """No batch waiting for a worker: a frame waits at most SOUNDMON_BATCH_MAX_WAIT_MS."""
    assert batch_wait_s(0.025, 0) == 0.025
    assert batch_wait_s(0.0, 0) == 0.0


def test_window_grows_with_the_backlog_up_to_the_cap():
    """One more base window per queued batch, never past BACKLOG_MAX_WAIT_S."""
    waits = [batch_wait_s(0.025, q) for q in range(0, 30)]
    assert waits == sorted(waits)
    assert waits[1] == pytest.approx(0.05) and waits[3] == pytest.approx(0.1)
    assert max(waits) == BACKLOG_MAX_WAIT_S


def test_no_batching_asked_means_none_even_with_a_backlog():
    """SOUNDMON_BATCH_MAX_WAIT_MS=0 (send at once) is respected; a longer window is never cut."""
    assert batch_wait_s(0.0, 50) == 0.0
    assert batch_wait_s(2.0, 50) == 2.0
