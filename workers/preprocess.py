"""Turn a batch of accepted frames into level rows (pure: no broker, no database).

A batch is what the gateway sends: a list of ``[device, recv_ms, payload]`` where
``payload`` is the raw protocol-v1 frame. Frames of the same shape (rate, sample count)
are processed together in one numpy call.

Two steps, so that the DSP can run on any host: ``relative_batch`` measures the signal
(levels in dB re full scale, "relative rows" with K = 0; it needs only the frames and the
stream states), and ``calibrate_rows`` adds each device's calibration offset K and the flags
that depend on its sensor (it needs the device registry, on the store's host).
``process_batch`` does both.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from soundmon.bands import encode_bands_array
from soundmon.metrics import FLAG_BIT
from soundmon.protocol import (
    KIND_LEVELS,
    KIND_PCM,
    KIND_THRESHOLD,
    LEVEL_FLAG_A_WEIGHTED,
    LEVEL_FLAG_BELOW_FLOOR,
    LEVEL_FLAG_CLIPPED,
    Frame,
    FrameError,
    decode_frame,
)
from soundmon.store import DeviceCalibration, LevelRow
from workers import dsp

log = logging.getLogger(__name__)

#: The upper frequency bound (20 kHz) can only be observed when fs/2 >= 20 kHz.
AUDIBLE_TOP_HZ = 20000.0


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def frame_time_ms(frame: Frame, recv_ms: int) -> int:
    """Unix ms of the first sample: the device clock, or the receive time if it was not synced."""
    return frame.t0_ms if frame.t0_ms > 0 else recv_ms


#: (device, boot, seq): the frame a stream state follows
StateKey = tuple[str, int, int]
SEQ_MODULO = 2**32  # seq is a u32 and wraps (protocol.md section 2)


def pcm_chains(items: Sequence[tuple[str, int, Frame]]) -> list[list[tuple[str, int, Frame]]]:
    """Split kind-1 frames into chains: one device and boot, consecutive seq, same rate and size.

    A chain is one stretch of a device's stream: its filters run through it without a break.
    Duplicates of a (device, boot, seq) within the batch are kept once.
    """
    by_stream: dict[tuple[str, int], dict[int, tuple[str, int, Frame]]] = defaultdict(dict)
    for item in items:
        by_stream[(item[0], item[2].boot)].setdefault(item[2].seq, item)
    chains: list[list[tuple[str, int, Frame]]] = []
    for frames in by_stream.values():
        chain: list[tuple[str, int, Frame]] = []
        for seq in sorted(frames):
            item = frames[seq]
            if chain and not (seq == chain[-1][2].seq + 1 and item[2].rate == chain[-1][2].rate
                              and item[2].count == chain[-1][2].count):
                chains.append(chain)
                chain = []
            chain.append(item)
        chains.append(chain)
    return chains


def predecessor(chain: Sequence[tuple[str, int, Frame]]) -> StateKey:
    """The key of the stream state a chain continues from: the frame just before its first."""
    device, _, frame = chain[0]
    return (device, frame.boot, (frame.seq - 1) % SEQ_MODULO)


def pcm_rows(
    items: Sequence[tuple[str, int, Frame]],
    states: Mapping[StateKey, dsp.StreamState] | None = None,
) -> tuple[list[LevelRow], dict[StateKey, dsp.StreamState]]:
    """Relative level rows (K = 0, see ``calibrate_rows``) for kind-1 frames, and the stream
    state after each chain.

    Chains of the same shape (rate, frame size, length) are analysed together in one
    vectorised call. ``states`` holds the states saved after earlier frames: a chain whose
    predecessor's state is there continues it, any other starts afresh. The returned dict
    maps the key of each chain's last frame to the state after it.
    """
    states = states or {}
    groups: dict[tuple[int, int, int], list[list[tuple[str, int, Frame]]]] = defaultdict(list)
    for chain in pcm_chains(items):
        groups[(chain[0][2].rate, chain[0][2].count, len(chain))].append(chain)
    rows: list[LevelRow] = []
    new_states: dict[StateKey, dsp.StreamState] = {}
    for (rate, _count, _length), chains in groups.items():
        samples = np.stack([np.stack([f.samples() for _, _, f in chain]) for chain in chains])
        feats, after = dsp.analyse_streams(samples, float(rate),
                                           [states.get(predecessor(chain)) for chain in chains])
        nyquist_limited = rate / 2.0 < AUDIBLE_TOP_HZ
        # Python floats and the encoded bands of the whole group at once: with real-time
        # devices a group is ~50 streams of one frame, and picking numpy scalars row by row
        # cost more than the rows themselves
        cols = {k: feats[k].tolist() for k in ROW_FEATURES}
        bands = encode_bands_array(feats["bands_db"])
        for s, chain in enumerate(chains):
            device, _, last = chain[-1]
            if after[s] is not None:
                new_states[(device, last.boot, last.seq)] = after[s]  # type: ignore[assignment]
            for i, (_, recv_ms, frame) in enumerate(chain):
                rows.append(_pcm_row(device, recv_ms, frame, nyquist_limited,
                                     {k: v[s][i] for k, v in cols.items()}, bands[s, i].tobytes()))
    return rows, new_states


#: the per-frame features a level row keeps (besides the bands)
ROW_FEATURES = ("clip_frac", "dbfs", "laeq", "dominant_hz", "lceq", "lafmax", "lafmin",
                "lcpeak", "centroid_hz")


def _pcm_row(device: str, recv_ms: int, frame: Frame, nyquist_limited: bool,
             f: Mapping[str, float], bands: bytes) -> LevelRow:
    flags = 0
    if f["clip_frac"] > 0:
        flags |= FLAG_BIT["clipped"]
    if nyquist_limited:
        flags |= FLAG_BIT["nyquist_limited"]
    dbfs = f["dbfs"]
    return LevelRow(
        device=device, boot=frame.boot, seq=frame.seq, idx=0,
        t_ms=frame_time_ms(frame, recv_ms), kind=KIND_PCM, rate=frame.rate, n=frame.count,
        dbfs=dbfs, lzeq=dbfs, laeq=f["laeq"],
        dominant_hz=_finite(f["dominant_hz"]), clip_frac=f["clip_frac"],
        duty=None, edges=None, k_db=0.0, flags=flags,
        lceq=f["lceq"], lafmax=f["lafmax"], lafmin=f["lafmin"],
        lcpeak=f["lcpeak"], centroid_hz=_finite(f["centroid_hz"]),
        bands=bands,
    )


def record_rows(device: str, recv_ms: int, frame: Frame) -> list[LevelRow]:
    """Relative rows (K = 0) for kind-2 (device-computed levels) and kind-3 (threshold) records."""
    t0 = frame_time_ms(frame, recv_ms)
    recs = frame.records()
    rows = []
    for i in range(frame.count):
        base = dict(device=device, boot=frame.boot, seq=frame.seq, idx=i,
                    t_ms=t0 + i * frame.rate, kind=frame.kind, rate=frame.rate, n=1,
                    dominant_hz=None, clip_frac=None, k_db=0.0)
        if frame.kind == KIND_LEVELS:
            level = int(recs["level_cdb"][i]) / 100.0
            rflags = int(recs["flags"][i])
            flags = 0
            if rflags & LEVEL_FLAG_CLIPPED:
                flags |= FLAG_BIT["clipped"]
            if rflags & LEVEL_FLAG_BELOW_FLOOR:
                flags |= FLAG_BIT["below_noise_floor"]
            weighted = bool(rflags & LEVEL_FLAG_A_WEIGHTED)
            rows.append(LevelRow(**base, dbfs=level, lzeq=None if weighted else level,
                                 laeq=level if weighted else None, duty=None, edges=None,
                                 flags=flags))
        else:
            rows.append(LevelRow(**base, dbfs=None, lzeq=None, laeq=None,
                                 duty=int(recs["duty_bp"][i]) / 100.0,
                                 edges=int(recs["edges"][i]), flags=FLAG_BIT["no_level"]))
    return rows


#: the fields of a row that are levels in dB: dBFS-relative until ``calibrate_rows`` adds K
SPL_FIELDS = ("lzeq", "laeq", "lceq", "lafmax", "lafmin", "lcpeak")


def calibrate_rows(rows: Sequence[LevelRow], cal: Mapping[str, DeviceCalibration]) -> Sequence[LevelRow]:
    """Turn relative rows (K = 0: what the preprocess step computes) into levels in dB, in place.

    The DSP measures the signal (dB re full scale); the device's calibration offset K, its
    sensor's noise floor and the flags that depend on them are metadata of the store's host
    (docs/deploy.md), so they are applied there: ``level = dBFS-relative level + K``. A sensor
    without a level (``k_db`` None, the LM393) gets no level and the ``no_level`` flag.
    """
    for r in rows:
        c = cal[r.device]
        r.k_db = c.k_db
        if r.kind == KIND_THRESHOLD:
            continue  # duty and edges only: no_level is set already
        if not c.calibrated:
            r.flags |= FLAG_BIT["uncalibrated"]
        if (r.kind == KIND_PCM and c.noise_floor_dbfs is not None and r.dbfs is not None
                and r.dbfs <= c.noise_floor_dbfs):
            r.flags |= FLAG_BIT["below_noise_floor"]
        k = c.k_db
        if k is None:
            r.flags |= FLAG_BIT["no_level"]
        for name in SPL_FIELDS:
            v = getattr(r, name)
            if v is not None:
                setattr(r, name, None if k is None else v + k)
    return rows


def decode_batch(batch: Sequence[Sequence]) -> list[tuple[str, int, Frame]]:
    """Decode a gateway batch. The gateway validated every frame already; anything that still
    fails here (a foreign producer on the queue) is logged and skipped, never fatal."""
    out = []
    for entry in batch:
        try:
            device, recv_ms, payload = entry
            out.append((str(device), int(recv_ms), decode_frame(bytes(payload))))
        except (FrameError, ValueError, TypeError) as exc:
            log.warning("skipping undecodable batch entry: %s", exc)
    return out


def state_keys_needed(decoded: Sequence[tuple[str, int, Frame]]) -> list[StateKey]:
    """Keys of the stream states a batch can continue from (one per chain of kind-1 frames)."""
    return [predecessor(chain) for chain in pcm_chains([d for d in decoded if d[2].kind == KIND_PCM])]


def relative_batch(
    decoded: Sequence[tuple[str, int, Frame]],
    states: Mapping[StateKey, dsp.StreamState] | None = None,
) -> tuple[list[LevelRow], dict[StateKey, dsp.StreamState]]:
    """Relative level rows (K = 0) of a decoded batch and the stream states to save: the
    preprocess step, which needs nothing but the frames (see ``pcm_rows``)."""
    pcm = [d for d in decoded if d[2].kind == KIND_PCM]
    rows, new_states = pcm_rows(pcm, states) if pcm else ([], {})
    for device, recv_ms, frame in decoded:
        if frame.kind in (KIND_LEVELS, KIND_THRESHOLD):
            rows.extend(record_rows(device, recv_ms, frame))
    return rows, new_states


def process_batch(
    decoded: Sequence[tuple[str, int, Frame]],
    cal: Mapping[str, DeviceCalibration],
    states: Mapping[StateKey, dsp.StreamState] | None = None,
) -> tuple[list[LevelRow], dict[StateKey, dsp.StreamState]]:
    """All level rows of a decoded batch in dB (``relative_batch`` then ``calibrate_rows``),
    and the stream states to save."""
    rows, new_states = relative_batch(decoded, states)
    calibrate_rows(rows, cal)
    return rows, new_states


def levels_for_batch(
    decoded: Sequence[tuple[str, int, Frame]], cal: Mapping[str, DeviceCalibration]
) -> list[LevelRow]:
    """All level rows of a decoded batch, every stream started afresh."""
    return process_batch(decoded, cal)[0]
