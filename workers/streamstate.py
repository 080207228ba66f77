"""Stream states (weighting filters and detectors) kept in Redis between batches.

A state is saved under the key of the frame it follows, ``soundmon:dsp:{device}:{boot}:{seq}``,
so any preprocess process can continue a device's stream from the exact frame before its
batch, in whatever order batches finish. A batch whose predecessor is not there (yet) starts
afresh: its first ~50 ms settle (docs/measurement.md). States expire after ``STATE_TTL_S``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import redis

from soundmon import jsonfast
from workers.dsp import StreamState
from workers.preprocess import StateKey

log = logging.getLogger("soundmon.workers")

PREFIX = "soundmon:dsp:"
#: A frame arrives within seconds of its predecessor; after a minute the stream is broken anyway.
STATE_TTL_S = 60


def key(k: StateKey) -> str:
    device, boot, seq = k
    return f"{PREFIX}{device}:{boot}:{seq}"


def load(client: redis.Redis, keys: Iterable[StateKey]) -> dict[StateKey, StreamState]:
    """The saved states among ``keys`` (missing or unreadable ones are left out)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    out: dict[StateKey, StreamState] = {}
    for k, raw in zip(wanted, client.mget([key(k) for k in wanted]), strict=True):
        if raw is None:
            continue
        try:
            out[k] = StreamState.from_json(jsonfast.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable stream state %s: %s", key(k), exc)
    return out


def save(client: redis.Redis, states: Mapping[StateKey, StreamState]) -> None:
    """Save each state under the key of the frame it follows, with a TTL."""
    if not states:
        return
    pipe = client.pipeline(transaction=False)
    for k, state in states.items():
        pipe.set(key(k), jsonfast.dumps(state.to_json()), ex=STATE_TTL_S)
    pipe.execute()
