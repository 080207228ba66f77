"""Per-frame acoustics of a stream: the one entry point the pipeline and ``soundmon analyze`` share.

``analyse_stream`` takes consecutive frames of one stream (one device, or one file) as a
2-D array and returns every per-frame feature at once (vectorised over frames), plus the
``StreamState`` to continue the stream with the next frames: the weighting filters' and the
time-weighting detectors' memory. Cutting a stream into frames anywhere therefore gives the
same numbers as processing it uncut. A stream that starts without a state (a new device, a
reboot, a gap in ``seq``) starts the filters at rest on the first frame's mean, so DC gives
no transient; the weighting filters settle within about 50 ms (docs/measurement.md). Its Fast
and Slow detectors start at 0 for the maxima and settled for the minima (``_analyse_chunk``).

Conventions (shared/protocol.md section 3):

* dBFS = 20 log10(rms / 32768) with the frame's mean removed first; a full-scale sine is
  -3.01 dBFS, a full-scale square wave 0 dBFS. LZeq = dBFS + K.
* LAeq, LCeq: energy of the A- / C-weighted signal over the frame (``workers.weighting``).
* LAFmax, LAFmin: extremes of the Fast (125 ms) exponential detector on the A-weighted signal;
  LCpeak: the largest absolute C-weighted sample. All levels in dB re full scale here; the
  caller adds K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import signal

from soundmon.bands import band_centres_hz
from workers import kernels, levels, spectrum, weighting
from workers.levels import (  # noqa: F401  (re-exported: the public DSP vocabulary)
    CLIP_HIGH,
    CLIP_LOW,
    FULL_SCALE,
    QUANTISATION_RMS,
    energetic_mean_db,
    ms_to_db,
    rms_to_db,
)
from workers.weighting import a_weighting_db, c_weighting_db  # noqa: F401  (re-exported)


@dataclass
class StreamState:
    """Memory of one stream between frames (all in counts / counts^2).

    ``zi_c``: the C cascade's sosfilt state, shape (n_c_sections, 2); ``zi_a``: the extra
    A section's, shape (1, 2) (A = C cascade + one section); ``detector``: weighting and time
    weighting (e.g. "AF") -> the detector's mean square just after the last sample, and
    "AF_min" -> the one the minima come from, while it still differs (a fresh start runs the
    maxima from 0 and the minima settled: ``_analyse_chunk``).
    """

    rate_hz: float
    zi_c: np.ndarray
    zi_a: np.ndarray
    detector: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rate_hz": self.rate_hz, "zi_c": self.zi_c.tolist(), "zi_a": self.zi_a.tolist(),
                "detector": dict(self.detector)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StreamState:
        return cls(float(d["rate_hz"]), np.asarray(d["zi_c"], dtype=float),
                   np.asarray(d["zi_a"], dtype=float),
                   {k: float(v) for k, v in d.get("detector", {}).items()})


@lru_cache(maxsize=32)
def _sections(rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(the A cascade as three sections: C's two, then the one that turns C into A; C's zi at
    rest on a unit input)."""
    sos_a = weighting.design("A", rate_hz)
    sos_c = weighting.design("C", rate_hz)
    # the kernels hard-code this structure (weighting.design builds A on C)
    assert sos_c.shape == (2, 6) and sos_a.shape == (3, 6) and np.array_equal(sos_a[:2], sos_c)
    sos = np.array(sos_a, dtype=np.float64)  # a copy: design() is cached and shared
    sos.flags.writeable = False
    return sos, signal.sosfilt_zi(sos_c)


@lru_cache(maxsize=64)
def _transition(rate_hz: float, n_samples: int) -> np.ndarray:
    """Phi (6, 6): the cascade's state after ``n_samples`` of silence is Phi @ its state before."""
    sos, _ = _sections(rate_hz)
    step = np.eye(6)
    kernels.cascade(np.zeros((1, 6)), sos, step)  # column j: one silent sample from state e_j
    return np.linalg.matrix_power(step, n_samples)


#: Aim for at least this many lanes in the compiled pass: fewer streams than this are cut into
#: segments of consecutive frames (each segment a lane), so the SIMD units stay busy. Measured
#: on AVX-512 (8 kHz, 0.5 s frames), us per frame of the main pass: 17 with 8 lanes, 6.3 with
#: 16, 5.0 with 32-48; every segment after a stream's first costs a cheaper pass (2.4 us).
MIN_LANES = 32


def _segments(n_streams: int, n_frames: int) -> int:
    """Segments per stream: the largest divisor of ``n_frames`` up to MIN_LANES / n_streams."""
    want = max(1, -(-MIN_LANES // n_streams))
    return max(d for d in range(1, min(n_frames, want) + 1) if n_frames % d == 0)


def _empty_features(shape: tuple[int, int], rate_hz: float, time_weightings: tuple[str, ...],
                    detector_weighting: str) -> dict[str, np.ndarray]:
    floor = np.full(shape, float(rms_to_db(0.0)))
    feats = {k: floor.copy() for k in ("dbfs", "laeq", "lceq", "lcpeak")}
    for w in time_weightings:
        feats[f"l{detector_weighting.lower()}{w.lower()}max"] = floor.copy()
        feats[f"l{detector_weighting.lower()}{w.lower()}min"] = floor.copy()
    spec = spectrum.frame_spectra(np.zeros((shape[0] * shape[1], 0)), rate_hz)
    feats.update({k: v.reshape(*shape, *v.shape[1:]) for k, v in spec.items()})
    feats.update(clip_frac=np.zeros(shape), rms=np.zeros(shape), ms_a=np.zeros(shape))
    feats["dbfs_a"] = feats["laeq"]
    return feats


def _by_stream(a: np.ndarray, n_streams: int) -> np.ndarray:
    """(..., n_frames_per_segment, segments * n_streams) lane layout -> (..., n_streams, n_frames)."""
    *lead, per_seg, lanes = a.shape
    seg = lanes // n_streams
    moved = a.reshape(*lead, per_seg, seg, n_streams)
    moved = np.moveaxis(moved, (-3, -2, -1), (-1, -2, -3))  # (..., n_streams, seg, per_seg)
    return moved.reshape(*lead, n_streams, seg * per_seg)


def _analyse_chunk(
    x: np.ndarray,
    rate_hz: float,
    states: Sequence[StreamState | None],
    *,
    clip: tuple[float, float] = (CLIP_LOW, CLIP_HIGH),
    time_weightings: tuple[str, ...] = ("F",),
    detector_weighting: str = "A",
) -> tuple[dict[str, np.ndarray], list[StreamState | None]]:
    """``analyse_streams`` on one cache-sized chunk (arguments and results as there)."""
    # the kernels are compiled for contiguous int16 (devices) and float64 (files, tests) only
    raw = np.ascontiguousarray(x, dtype=np.int16 if np.asarray(x).dtype == np.int16 else np.float64)
    n_streams, n_frames, n = raw.shape
    rate_hz = float(rate_hz)
    shape = (n_streams, n_frames)
    if len(time_weightings) > 2 or not set(time_weightings) <= set(levels.TIME_CONSTANTS_S):
        raise ValueError(f"time_weightings: at most two of {tuple(levels.TIME_CONSTANTS_S)}")
    mode = {"A": kernels.MODE_A, "C": kernels.MODE_C, "Z": kernels.MODE_Z}[detector_weighting]
    raw_flat = raw.reshape(n_streams * n_frames, n)
    # DC, dBFS, clipping and spectra per frame, in cache-sized pieces
    prep = np.empty((n_streams * n_frames, 3))  # mean, mean square without it, clipped share
    band_ms = np.empty((n_streams * n_frames, len(band_centres_hz(rate_hz))))
    spec = np.empty((n_streams * n_frames, 2))  # centroid, dominant frequency
    rows = max(1, PIECE_SAMPLES // n)
    window = spectrum.window(n)
    for r0 in range(0, n_streams * n_frames, rows):
        xw = kernels.scratch("windowed", (min(rows, n_streams * n_frames - r0), n))
        kernels.frame_prep(raw_flat[r0:r0 + rows], float(clip[0]), float(clip[1]), window, xw,
                           prep[r0:r0 + rows])
        spectrum.windowed_features(xw, rate_hz, band_ms[r0:r0 + rows], spec[r0:r0 + rows])
    mean, ms_z = prep[:, 0], prep[:, 1]
    basics = {"clip_frac": prep[:, 2], "dbfs": ms_to_db(ms_z), "rms": np.sqrt(ms_z),
              "bands_db": spectrum.bands_to_db(band_ms), "centroid_hz": spec[:, 0],
              "dominant_hz": spec[:, 1]}
    sos, unit_zi = _sections(rate_hz)
    fresh = [s is None or s.rate_hz != rate_hz for s in states]
    bias = mean.reshape(shape)[:, 0]
    z0 = np.empty((6, n_streams))
    for i, s in enumerate(states):
        if fresh[i]:  # at rest on the first frame's mean: the bias enters without a step
            z0[:4, i], z0[4:, i] = (unit_zi * bias[i]).ravel(), 0.0
        else:
            z0[:4, i], z0[4:, i] = s.zi_c.ravel(), s.zi_a.ravel()  # type: ignore[union-attr]

    # Lanes for the compiled pass: each stream cut into `segs` runs of consecutive frames, lane
    # k * n_streams + s holding segment k of stream s; samples down, lanes across. The filters
    # see the raw samples (their zeros at 0 Hz remove the bias): subtracting each frame's own
    # mean would put a step at every frame edge.
    segs = _segments(n_streams, n_frames)
    per_seg = n_frames // segs
    seg_n = per_seg * n
    lanes = segs * n_streams
    xt = kernels.scratch("lanes", (seg_n, lanes))
    kernels.to_lanes(raw_flat, _lane_rows(n_streams, n_frames, segs), xt)
    z = np.empty((6, lanes))
    z[:, :n_streams] = z0
    if segs > 1:  # the state at each later segment's start: its predecessor from rest + Phi
        rest = np.zeros((6, lanes - n_streams))
        kernels.cascade(xt, sos, rest)
        phi = _transition(rate_hz, seg_n)
        for k in range(1, segs):
            prev = z[:, (k - 1) * n_streams:k * n_streams]
            z[:, k * n_streams:(k + 1) * n_streams] = rest[:, (k - 1) * n_streams:k * n_streams] + phi @ prev
    z_start = z[:, :n_streams].copy()

    tws = time_weightings or ("F",)  # the pass always runs one detector; unused when none asked
    block = levels.block_length(n, rate_hz)
    alphas = [levels.time_constant_alpha(rate_hz, levels.TIME_CONSTANTS_S[w]) for w in tws]
    means = _lanes(mean.reshape(shape), segs)
    stats = np.empty((3, per_seg, lanes))
    u = kernels.scratch("rises", (len(tws), per_seg * (n // block), lanes))
    kernels.weighted_pass(xt, sos, z, n, block, mode, means, np.array(alphas), stats, u)
    ms_a, ms_c, peak_c = _by_stream(stats, n_streams)
    ms_a, ms_c = ms_a / n, ms_c / n

    feats: dict[str, np.ndarray] = {k: v.reshape(*shape, *v.shape[1:]) for k, v in basics.items()}
    feats.update(laeq=ms_to_db(ms_a), lceq=ms_to_db(ms_c), lcpeak=rms_to_db(peak_c), ms_a=ms_a)
    detectors: list[dict[str, float]] = [{} if f else dict(s.detector)  # type: ignore[union-attr]
                                         for f, s in zip(fresh, states, strict=True)]
    prefix = "l" + detector_weighting.lower()
    names = [detector_weighting + w for w in time_weightings]  # state keys, e.g. "AF"
    # A fresh start (no state: what came before the stream is unknown) runs two detectors that
    # differ only in their start (IEC 61672-1 defines L_AF(t) by an integral from -infinity):
    # - maxima: from 0, a meter switched on at the first sample. Past sound can only add
    #   energy, so this never reads high: a burst at the first sample meets Table 4 (a start
    #   at the first 125 ms' mean square counted such a burst twice, up to +3 dB). A steady
    #   sound reads 10 lg(1 - e^(-T/tau)) low at the end of the first frame of T s: 0.08 dB
    #   for a 0.5 s frame, 0.0015 dB for 1 s (Fast); from the second frame on, nothing.
    # - minima: settled, at the mean square of the first tau, as if that had been steady
    #   before; from 0 every first frame's LAFmin would read the rise (the -101 dB floor).
    # Both follow the same recursion, so the minima detector stays the maxima's value plus
    # a decaying `lag` (kernels.detector_extremes); the state keeps it (key NAME_min) until
    # it no longer changes the value. docs/measurement.md "Time weighting".
    need = [i for i, d in enumerate(detectors) if any(name not in d for name in names)]
    head_ms = np.zeros((len(tws), n_streams))
    if need and time_weightings:
        heads = np.array([min(n, max(1, int(levels.TIME_CONSTANTS_S[w] * rate_hz))) for w in tws])
        out = np.zeros((len(tws), len(need)))
        kernels.head_sums(np.ascontiguousarray(xt[: heads.max(), need]), sos,
                          np.ascontiguousarray(z_start[:, need]), mode,
                          mean.reshape(shape)[need, 0], heads, out)
        head_ms[:, need] = out / heads[:, np.newaxis]
    for t, w in enumerate(time_weightings):
        name = names[t]
        y0 = np.array([d.get(name, 0.0) for d in detectors])
        lag = np.array([max(0.0, d.get(name + "_min", d[name]) - d[name]) if name in d
                        else head_ms[t, i] for i, d in enumerate(detectors)])
        extremes = np.empty((2, n_streams, n_frames))
        decay = (1.0 - alphas[t]) ** block
        y_end = kernels.detector_extremes(u[t], decay, y0, lag, n // block, extremes)
        for i, d in enumerate(detectors):
            d[name] = float(y_end[i])
            low = float(y_end[i] + lag[i])
            if low != d[name]:
                d[name + "_min"] = low
            else:  # the two have met (to the last bit): one value again
                d.pop(name + "_min", None)
        feats[f"{prefix}{w.lower()}max"] = ms_to_db(extremes[0])
        feats[f"{prefix}{w.lower()}min"] = ms_to_db(extremes[1])
    feats["dbfs_a"] = feats["laeq"]
    z_end = z[:, (segs - 1) * n_streams:].T.copy()  # (n_streams, 6)
    zi_c, zi_a = z_end[:, :4].reshape(n_streams, 2, 2), z_end[:, 4:].reshape(n_streams, 1, 2)
    new_states: list[StreamState | None] = [
        StreamState(rate_hz, zi_c[i], zi_a[i], detectors[i]) for i in range(n_streams)]
    return feats, new_states


@lru_cache(maxsize=64)
def _lane_rows(n_streams: int, n_frames: int, segs: int) -> np.ndarray:
    """(n_frames / segs, segs * n_streams): the frame (row of the flat batch) each lane holds j-th."""
    return _lanes(np.arange(n_streams * n_frames).reshape(n_streams, n_frames), segs)


def _lanes(per_frame: np.ndarray, segs: int) -> np.ndarray:
    """(n_streams, n_frames) -> (n_frames / segs, segs * n_streams): the lane layout of frames."""
    n_streams, n_frames = per_frame.shape
    return np.ascontiguousarray(
        per_frame.reshape(n_streams, segs, n_frames // segs).transpose(2, 1, 0)
        .reshape(n_frames // segs, segs * n_streams))


#: A chunk (one compiled pass) holds at most this many frames: enough lanes for the SIMD loop,
#: few enough that the filter states of all lanes stay in the L1 cache.
CHUNK_FRAMES = 128
#: ... and at most this many samples (every float64 copy of a chunk takes 8 bytes a sample).
CHUNK_SAMPLES = 1 << 22
#: The per-frame numpy work (DC, RMS, spectra) runs on pieces of at most this many samples:
#: its temporaries stay in the CPU cache (about 2x faster than one call over 64 frames).
PIECE_SAMPLES = 65536


def analyse_streams(
    x: np.ndarray,
    rate_hz: float,
    states: Sequence[StreamState | None],
    *,
    clip: tuple[float, float] = (CLIP_LOW, CLIP_HIGH),
    time_weightings: tuple[str, ...] = ("F",),
    detector_weighting: str = "A",
) -> tuple[dict[str, np.ndarray], list[StreamState | None]]:
    """All features of several streams at once, each given as consecutive frames.

    Parameters
    ----------
    x : ndarray, shape (n_streams, n_frames, n_samples)
        Samples in int16 counts (any real dtype: files give fractional counts). Row s holds
        ``n_frames`` consecutive frames of stream s (e.g. one device's frames in a batch).
    rate_hz : float
        Sample rate in Hz of every stream (8000-48000 Hz verified).
    states : sequence of StreamState or None, length n_streams
        What the previous call returned for each stream; None (or a state of another rate)
        starts that stream afresh.
    clip : (low, high)
        Samples at or beyond these values count as clipped (default: the ESP32 rails).
    time_weightings : tuple of "F", "S"
        Time-weighting detectors to run; each adds ``la{w}max`` and ``la{w}min``.
    detector_weighting : {"A", "C", "Z"}
        Frequency weighting the detectors see (keys become ``lc{w}max`` ... for C).

    Returns
    -------
    features : dict of ndarrays, shape (n_streams, n_frames) unless noted; levels in dB re
        full scale: ``dbfs`` (Z, DC removed), ``laeq``, ``lceq``, ``lafmax``, ``lafmin`` (and
        ``lasmax``, ``lasmin`` when asked), ``lcpeak``; ``ms_a`` (A-weighted mean square,
        counts^2), ``clip_frac`` (0..1), ``rms`` (counts), ``dominant_hz``, ``centroid_hz``
        (Hz, NaN when undefined), ``bands_db`` (n_streams, n_frames, n_bands); ``dbfs_a`` is
        an alias of ``laeq``.
    states : list of StreamState, each stream's state after its last frame (unchanged for
        frames of zero samples).
    """
    x = np.asarray(x)
    n_streams, n_frames, n = x.shape
    if n == 0 or n_frames == 0 or n_streams == 0:
        return (_empty_features((n_streams, n_frames), float(rate_hz), time_weightings,
                                detector_weighting), list(states))
    frames_per_chunk = max(1, min(CHUNK_FRAMES, CHUNK_SAMPLES // n))
    streams_per_chunk = max(1, frames_per_chunk // n_frames)
    kw: dict[str, Any] = dict(clip=clip, time_weightings=time_weightings,
                              detector_weighting=detector_weighting)
    parts: list[dict[str, np.ndarray]] = []
    out_states: list[StreamState | None] = []
    if n_frames <= frames_per_chunk:  # several whole streams per chunk
        for s0 in range(0, n_streams, streams_per_chunk):
            f, st = _analyse_chunk(x[s0:s0 + streams_per_chunk], rate_hz,
                                   states[s0:s0 + streams_per_chunk], **kw)
            parts.append(f)
            out_states += st
        return _joined(parts, axis=0), out_states
    for s0 in range(n_streams):  # long streams: chunks of frames, the state carried through
        state, pieces = states[s0], []
        for f0 in range(0, n_frames, frames_per_chunk):
            f, (state,) = _analyse_chunk(x[s0:s0 + 1, f0:f0 + frames_per_chunk], rate_hz,
                                         [state], **kw)
            pieces.append(f)
        parts.append(_joined(pieces, axis=1))
        out_states.append(state)
    return _joined(parts, axis=0), out_states


def _joined(parts: list[dict[str, np.ndarray]], axis: int) -> dict[str, np.ndarray]:
    """The features of consecutive chunks as one (the chunk itself when there is one)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=axis) for k in parts[0]}


def analyse_stream(
    frames: np.ndarray,
    rate_hz: float,
    state: StreamState | None = None,
    *,
    clip: tuple[float, float] = (CLIP_LOW, CLIP_HIGH),
    time_weightings: tuple[str, ...] = ("F",),
    detector_weighting: str = "A",
) -> tuple[dict[str, np.ndarray], StreamState | None]:
    """``analyse_streams`` for one stream: ``frames`` of shape (n_frames, n_samples) or (n,).

    Returns the features with shape (n_frames,) (``bands_db``: (n_frames, n_bands)) and the
    state to continue the stream with.
    """
    x = np.asarray(frames)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    feats, states = analyse_streams(x[np.newaxis], rate_hz, [state], clip=clip,
                                    time_weightings=time_weightings,
                                    detector_weighting=detector_weighting)
    return {k: v[0] for k, v in feats.items()}, states[0]


def frame_features(samples: np.ndarray, rate_hz: float,
                   state: StreamState | None = None) -> dict[str, np.ndarray]:
    """``analyse_stream`` without the returned state: features of consecutive frames."""
    return analyse_stream(samples, rate_hz, state)[0]
