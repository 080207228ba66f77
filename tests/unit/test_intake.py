"""The gateway core: classification, duplicates, batching and the acknowledgement rule."""

from __future__ import annotations

import threading

from gateway.intake import ACK_NOW, QUEUED, Intake
from tests.helpers import hand_frame

T = "soundmon/v1/dev/frame"


def frame(seq, boot=1):
    return hand_frame(seq, boot, 0, 8000, [1, 2, 3, 4])


def test_rejects_are_acked_at_once_and_counted():
    """A malformed frame is acknowledged immediately and counted by reason."""
    it = Intake()
    assert it.offer(T, b"junk", 1, 0, 0.0) == ACK_NOW
    assert it.offer("soundmon/v1/BAD/frame", frame(0), 2, 0, 0.0) == ACK_NOW
    snap = it.snapshot()
    assert snap["rejected:short_header"] == 1 and snap["rejected:bad_device_id"] == 1
    assert snap["queued"] == 0


def test_acks_only_after_commit():
    """Queued frames are acknowledged only when their batch is committed."""
    it = Intake(max_batch=10)
    for i in range(3):
        assert it.offer(T, frame(i), 100 + i, 0, 0.0) == QUEUED
    batch = it.wait_batch(0.0, lambda: 1.0, threading.Event())
    assert batch is not None and len(batch.frames) == 3
    assert it.committed(batch) == [100, 101, 102]


def test_duplicates_after_commit_are_dropped():
    """A frame seen again after its batch was committed is acknowledged and dropped."""
    it = Intake(max_batch=10)
    it.offer(T, frame(0), 1, 0, 0.0)
    it.committed(it.wait_batch(0.0, lambda: 1.0, threading.Event()))
    assert it.offer(T, frame(0), 2, 0, 0.0) == ACK_NOW
    assert it.snapshot()["duplicates"] == 1


def test_duplicate_while_queued_is_acked_with_the_original():
    """A duplicate of a queued frame is acknowledged together with it, and sent once."""
    it = Intake(max_batch=10)
    it.offer(T, frame(0), 1, 0, 0.0)
    assert it.offer(T, frame(0), 2, 0, 0.0) == QUEUED
    batch = it.wait_batch(0.0, lambda: 1.0, threading.Event())
    assert len(batch.frames) == 1 and it.committed(batch) == [1, 2]


def test_ids_from_an_old_connection_are_not_acked():
    """After a reconnect, message ids of the previous connection are never acknowledged."""
    it = Intake(max_batch=10)
    it.offer(T, frame(0), 1, 0, 0.0)
    it.new_session()
    it.offer(T, frame(1), 1, 0, 0.0)
    batch = it.wait_batch(0.0, lambda: 1.0, threading.Event())
    assert len(batch.frames) == 2 and it.committed(batch) == [1]


def test_failed_send_requeues_in_front():
    """A batch the Celery broker refused goes back in front, in order."""
    it = Intake(max_batch=2)
    for i in range(3):
        it.offer(T, frame(i), i, 0, 0.0)
    batch = it.wait_batch(0.0, lambda: 1.0, threading.Event())
    it.requeue(batch, 0.0)
    again = it.wait_batch(0.0, lambda: 1.0, threading.Event())
    assert [p.key[2] for p in again.frames] == [0, 1]
    assert it.snapshot()["send_errors"] == 1


def test_batches_are_bounded_by_count():
    """A batch never holds more than max_batch messages."""
    it = Intake(max_batch=4)
    for i in range(10):
        it.offer(T, frame(i), i, 0, 0.0)
    batch = it.wait_batch(10.0, lambda: 0.0, threading.Event())
    assert len(batch) == 4


def test_status_is_forwarded_and_bad_status_rejected():
    """A JSON status is queued; a non-object status is rejected as bad_status."""
    it = Intake()
    assert it.offer("soundmon/v1/dev/status", b'{"state":"online"}', 1, 5, 0.0) == QUEUED
    assert it.offer("soundmon/v1/dev/status", b"[1]", 2, 5, 0.0) == ACK_NOW
    batch = it.wait_batch(0.0, lambda: 1.0, threading.Event())
    assert batch.statuses[0].body == ["dev", {"state": "online"}, 5]
