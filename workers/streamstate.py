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


#: SET key value EX ttl for every key of the call: one command for a batch's states. With
#: real-time devices a batch holds one frame of each of ~50 devices, and 50 pipelined SETs
#: cost the preprocess worker 2.4x the client CPU of this one call (0.55 against 0.23 ms a
#: batch here; Redis's own CPU is the same).
SAVE_SCRIPT = "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i + 1], 'EX', ARGV[1]) end"


def save(client: redis.Redis, states: Mapping[StateKey, StreamState]) -> None:
    """Save each state under the key of the frame it follows, with a TTL."""
    if not states:
        return
    script = _scripts.get(id(client))
    if script is None or script[0] is not client:
        script = _scripts[id(client)] = (client, client.register_script(SAVE_SCRIPT))
    script[1](keys=[key(k) for k in states],
              args=[STATE_TTL_S, *(jsonfast.dumps(s.to_json()) for s in states.values())])


#: the registered save script of each client (redis-py runs it by its SHA, loading it once)
_scripts: dict[int, tuple[redis.Redis, object]] = {}
