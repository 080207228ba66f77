"""Turn a batch of accepted frames into level rows (pure: no broker, no database).

A batch is what the gateway sends: a list of ``[device, recv_ms, payload]`` where
``payload`` is the raw protocol-v1 frame. Frames of the same shape (rate, sample count)
are processed together in one numpy call.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

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
    return float(v) if np.isfinite(v) else None


def frame_time_ms(frame: Frame, recv_ms: int) -> int:
    """Unix ms of the first sample: the device clock, or the receive time if it was not synced."""
    return frame.t0_ms if frame.t0_ms > 0 else recv_ms


def pcm_rows(
    items: Sequence[tuple[str, int, Frame]], cal: Mapping[str, DeviceCalibration]
) -> list[LevelRow]:
    """Level rows for kind-1 frames, vectorised per (rate, count) group."""
    groups: dict[tuple[int, int], list[tuple[str, int, Frame]]] = defaultdict(list)
    for item in items:
        groups[(item[2].rate, item[2].count)].append(item)
    rows: list[LevelRow] = []
    for (rate, count), group in groups.items():
        samples = np.stack([f.samples() for _, _, f in group])
        feats = dsp.frame_features(samples, float(rate))
        nyquist_limited = rate / 2.0 < AUDIBLE_TOP_HZ
        for i, (device, recv_ms, frame) in enumerate(group):
            c = cal[device]
            flags = 0
            if feats["clip_frac"][i] > 0:
                flags |= FLAG_BIT["clipped"]
            if nyquist_limited:
                flags |= FLAG_BIT["nyquist_limited"]
            if not c.calibrated:
                flags |= FLAG_BIT["uncalibrated"]
            dbfs = float(feats["dbfs"][i])
            if c.noise_floor_dbfs is not None and dbfs <= c.noise_floor_dbfs:
                flags |= FLAG_BIT["below_noise_floor"]
            if c.k_db is None:
                flags |= FLAG_BIT["no_level"]
            rows.append(
                LevelRow(
                    device=device, boot=frame.boot, seq=frame.seq, idx=0,
                    t_ms=frame_time_ms(frame, recv_ms), kind=KIND_PCM, rate=rate, n=count,
                    dbfs=dbfs,
                    lzeq=None if c.k_db is None else dbfs + c.k_db,
                    laeq=None if c.k_db is None else float(feats["dbfs_a"][i]) + c.k_db,
                    dominant_hz=_finite(feats["dominant_hz"][i]),
                    clip_frac=float(feats["clip_frac"][i]),
                    duty=None, edges=None, k_db=c.k_db, flags=flags,
                )
            )
    return rows


def record_rows(device: str, recv_ms: int, frame: Frame, c: DeviceCalibration) -> list[LevelRow]:
    """Rows for kind-2 (device-computed levels) and kind-3 (threshold) records."""
    t0 = frame_time_ms(frame, recv_ms)
    recs = frame.records()
    rows = []
    for i in range(frame.count):
        base = dict(device=device, boot=frame.boot, seq=frame.seq, idx=i,
                    t_ms=t0 + i * frame.rate, kind=frame.kind, rate=frame.rate, n=1,
                    dominant_hz=None, clip_frac=None, k_db=c.k_db)
        if frame.kind == KIND_LEVELS:
            level = int(recs["level_cdb"][i]) / 100.0
            rflags = int(recs["flags"][i])
            flags = 0
            if rflags & LEVEL_FLAG_CLIPPED:
                flags |= FLAG_BIT["clipped"]
            if rflags & LEVEL_FLAG_BELOW_FLOOR:
                flags |= FLAG_BIT["below_noise_floor"]
            if not c.calibrated:
                flags |= FLAG_BIT["uncalibrated"]
            weighted = bool(rflags & LEVEL_FLAG_A_WEIGHTED)
            spl = None if c.k_db is None else level + c.k_db
            if c.k_db is None:
                flags |= FLAG_BIT["no_level"]
            rows.append(LevelRow(**base, dbfs=level, lzeq=None if weighted else spl,
                                 laeq=spl if weighted else None, duty=None, edges=None,
                                 flags=flags))
        else:
            rows.append(LevelRow(**base, dbfs=None, lzeq=None, laeq=None,
                                 duty=int(recs["duty_bp"][i]) / 100.0,
                                 edges=int(recs["edges"][i]), flags=FLAG_BIT["no_level"]))
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


def levels_for_batch(
    decoded: Sequence[tuple[str, int, Frame]], cal: Mapping[str, DeviceCalibration]
) -> list[LevelRow]:
    """All level rows of a decoded batch, in batch order per kind."""
    pcm = [d for d in decoded if d[2].kind == KIND_PCM]
    rows = pcm_rows(pcm, cal) if pcm else []
    for device, recv_ms, frame in decoded:
        if frame.kind in (KIND_LEVELS, KIND_THRESHOLD):
            rows.extend(record_rows(device, recv_ms, frame, cal[device]))
    return rows
