"""Compiled inner loops of the DSP (numba): the weighting cascade with its statistics, the detector,
DC/clipping per frame and the features of each spectrum.

Why compiled: the A and C weightings are recursive (IIR) filters, so every output sample needs
the one before it. scipy's ``sosfilt`` runs that recursion at 5-8 ns a sample per pass, more
than the whole "bare floor" of a frame (DC removal, RMS and one rfft). These kernels run the
three sections (C = two, A = C plus one) in one pass and take every statistic in the same
pass, for many independent *lanes* at once: the inner loop goes across lanes, so the compiler
turns it into SIMD code and the recursion of one lane never waits for itself.

A lane is a run of consecutive frames of one stream (``workers.dsp`` chooses them). A lane
that does not start a stream needs the filter state at its start before the main pass: the
state after a lane is linear in its samples, ``z_end = z_rest_end + Phi z_start``, so a
cheaper pass from rest (``cascade``) plus the transition ``Phi`` over the lane gives every
lane's start in a few 6x6 products (``dsp``). The results equal ``scipy.signal.sosfilt`` /
``lfilter`` with the same states to rounding (levels within 1e-9 dB; ``tests/unit/test_dsp.py``).

Layouts: ``x`` is (samples, lanes) float64 (time down, lanes across), the state ``z`` is
(6, lanes) in scipy's transposed direct form II order: C high-pass (2), C low-pass (2), the
section that turns C into A (2). ``sos`` is (3, 6) in ``sosfilt`` layout. All compiled with
``cache=True``: the machine code is kept in ``__pycache__`` (a cold compile of everything costs
about 5 s of CPU, loading it about 0.5 s; ``warm_up`` does either when a worker starts).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

#: detector signal: the A-weighted, the C-weighted, or the unweighted frame without its mean
MODE_A, MODE_C, MODE_Z = 0, 1, 2

#: Work arrays up to this size are kept for the next call (per thread): a fresh array of a
#: few hundred kB is a fresh mmap, and faulting its pages in costs as much as a kernel pass.
SCRATCH_MAX_BYTES = 16 << 20
_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
    """An uninitialised work array of ``shape``, reused by the next call asking for ``name``.

    Only for intermediate results: the next call with the same name overwrites it.
    """
    size = math.prod(shape)
    if size * 16 > SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    bufs: dict[str, np.ndarray] = _scratch.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = bufs[name] = np.empty(max(size, 1), dtype)
    return buf[:size].reshape(shape)


#: Filter kernels: fused multiply-adds allowed (one rounding instead of two, a little more
#: accurate than scipy's plain DF2T), nothing reordered.
_FILTER = {"contract"}
#: Samples per tile: each lane keeps its state in registers over a tile (a constant, so the
#: compiler unrolls the tile and still vectorises across lanes; ``weighted_pass`` spells out 4).
TILE = 4


@njit
def _coefficients(sos: np.ndarray, k: int) -> tuple[float, float, float, float, float]:
    """Section k's (b0, b1, b2, a1, a2), as scalars: the kernels keep them in registers."""
    return sos[k, 0], sos[k, 1], sos[k, 2], sos[k, 4], sos[k, 5]


@njit
def _state(z: np.ndarray, lane: int) -> tuple[float, float, float, float, float, float]:
    return z[0, lane], z[1, lane], z[2, lane], z[3, lane], z[4, lane], z[5, lane]


@njit(fastmath=_FILTER)
def _section(v: float, s0: float, s1: float, b0: float, b1: float, b2: float, a1: float,
             a2: float) -> tuple[float, float, float]:
    """One transposed direct form II biquad step: (output, new s0, new s1), as scipy's sosfilt."""
    y = b0 * v + s0
    return y, b1 * v - a1 * y + s1, b2 * v - a2 * y


@njit(cache=True, fastmath=_FILTER)
def cascade(x: np.ndarray, sos: np.ndarray, z: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Run the three sections over the first ``z.shape[1]`` lanes of ``x`` (n, >= lanes), updating
    the state ``z`` (6, lanes) in place."""
    n = x.shape[0]
    lanes = min(z.shape[1], x.shape[1])
    hp, lp, aw = _coefficients(sos, 0), _coefficients(sos, 1), _coefficients(sos, 2)
    i = 0
    while i < n:
        if n - i >= TILE:
            for lane in range(lanes):
                s0, s1, s2, s3, s4, s5 = _state(z, lane)
                for t in range(TILE):
                    y, s0, s1 = _section(x[i + t, lane], s0, s1, *hp)
                    c, s2, s3 = _section(y, s2, s3, *lp)
                    _, s4, s5 = _section(c, s4, s5, *aw)
                z[0, lane], z[1, lane], z[2, lane] = s0, s1, s2
                z[3, lane], z[4, lane], z[5, lane] = s3, s4, s5
            i += TILE
        else:
            for lane in range(lanes):
                y, z[0, lane], z[1, lane] = _section(x[i, lane], z[0, lane], z[1, lane], *hp)
                c, z[2, lane], z[3, lane] = _section(y, z[2, lane], z[3, lane], *lp)
                _, z[4, lane], z[5, lane] = _section(c, z[4, lane], z[5, lane], *aw)
            i += 1


@njit(cache=True, fastmath=_FILTER)
def weighted_pass(x: np.ndarray, sos: np.ndarray, z: np.ndarray, frame_n: int, block: int,
                  mode: int, means: np.ndarray, alphas: np.ndarray, stats: np.ndarray,
                  u: np.ndarray) -> None:  # pragma: no cover (compiled)
    """The main pass: filter every lane and take each frame's statistics on the way.

    Parameters
    ----------
    x : (n_frames * frame_n, lanes) samples; z : (6, lanes) state at the start, updated.
    frame_n : samples per frame; block : samples per detector block (divides frame_n).
    mode : MODE_A / MODE_C / MODE_Z, the signal the detectors see.
    means : (n_frames, lanes) frame means (MODE_Z subtracts them).
    alphas : (n_det,) per-sample smoothing factor of each detector (1 or 2 detectors).
    stats : (3, n_frames, lanes) out: sum of A^2, sum of C^2, max |C| per frame.
    u : (n_det, n_frames * frame_n / block, lanes) out: each block's rise of the detector
        from rest, u += alpha (x^2 - u) over its samples from u = 0; the detector at the
        block's end is then decay * (its value at the start) + u (``workers.levels.detector``).
    """
    n, lanes = x.shape
    n_det = alphas.shape[0]
    al0, al1 = alphas[0], alphas[n_det - 1]
    hp, lp, aw = _coefficients(sos, 0), _coefficients(sos, 1), _coefficients(sos, 2)
    acc = np.zeros((5, lanes))  # sum A^2, sum C^2, max |C|, block sums of the two detectors
    for blk in range(n // block):
        start = blk * block
        frame = start // frame_n
        tiles_end = start + block // TILE * TILE
        # whole tiles, then the block's last samples one at a time (the step is written twice:
        # a constant tile length is what lets the compiler unroll it and vectorise the lanes)
        for i in range(start, tiles_end, TILE):
            for lane in range(lanes):
                s0, s1, s2, s3, s4, s5 = _state(z, lane)
                sa, sc, pk, u0, u1 = acc[0, lane], acc[1, lane], acc[2, lane], acc[3, lane], acc[4, lane]
                m = means[frame, lane]
                for t in range(TILE):
                    v = x[i + t, lane]
                    y, s0, s1 = _section(v, s0, s1, *hp)
                    c, s2, s3 = _section(y, s2, s3, *lp)
                    a, s4, s5 = _section(c, s4, s5, *aw)
                    q = _detector_input(mode, a, c, v - m)
                    sa += a * a
                    sc += c * c
                    pk = max(pk, abs(c))
                    u0 += al0 * (q - u0)
                    u1 += al1 * (q - u1)
                z[0, lane], z[1, lane], z[2, lane] = s0, s1, s2
                z[3, lane], z[4, lane], z[5, lane] = s3, s4, s5
                acc[0, lane], acc[1, lane], acc[2, lane], acc[3, lane], acc[4, lane] = sa, sc, pk, u0, u1
        for i in range(tiles_end, start + block):
            for lane in range(lanes):
                v = x[i, lane]
                y, z[0, lane], z[1, lane] = _section(v, z[0, lane], z[1, lane], *hp)
                c, z[2, lane], z[3, lane] = _section(y, z[2, lane], z[3, lane], *lp)
                a, z[4, lane], z[5, lane] = _section(c, z[4, lane], z[5, lane], *aw)
                q = _detector_input(mode, a, c, v - means[frame, lane])
                acc[0, lane] += a * a
                acc[1, lane] += c * c
                acc[2, lane] = max(acc[2, lane], abs(c))
                acc[3, lane] += al0 * (q - acc[3, lane])
                acc[4, lane] += al1 * (q - acc[4, lane])
        for lane in range(lanes):
            u[0, blk, lane] = acc[3, lane]
            u[n_det - 1, blk, lane] = acc[4, lane]
            acc[3, lane] = 0.0
            acc[4, lane] = 0.0
        if (start + block) % frame_n == 0:
            for lane in range(lanes):
                stats[0, frame, lane] = acc[0, lane]
                stats[1, frame, lane] = acc[1, lane]
                stats[2, frame, lane] = acc[2, lane]
                acc[0, lane] = 0.0
                acc[1, lane] = 0.0
                acc[2, lane] = 0.0


@njit(fastmath=_FILTER)
def _detector_input(mode: int, a: float, c: float, d: float) -> float:
    """The detector's input: A^2, C^2 or (x - mean)^2."""
    if mode == MODE_C:
        return c * c
    if mode == MODE_Z:
        return d * d
    return a * a


@njit(cache=True, fastmath=_FILTER)
def head_sums(x: np.ndarray, sos: np.ndarray, z: np.ndarray, mode: int, means: np.ndarray,
              heads: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Sum of the detector signal squared over the first ``heads[d]`` samples of each lane.

    ``x`` (>= max(heads), lanes) from state ``z`` (6, lanes; not modified); ``means`` (lanes,);
    ``out`` (n_det, lanes). A fresh stream's minima detector starts at the mean of these.
    """
    lanes = x.shape[1]
    hp, lp, aw = _coefficients(sos, 0), _coefficients(sos, 1), _coefficients(sos, 2)
    for lane in range(lanes):
        s0, s1, s2, s3, s4, s5 = _state(z, lane)
        for i in range(heads.max()):
            v = x[i, lane]
            y, s0, s1 = _section(v, s0, s1, *hp)
            c, s2, s3 = _section(y, s2, s3, *lp)
            a, s4, s5 = _section(c, s4, s5, *aw)
            q = _detector_input(mode, a, c, v - means[lane])
            for d in range(heads.shape[0]):
                if i < heads[d]:
                    out[d, lane] += q


@njit(cache=True)
def detector_extremes(u: np.ndarray, decay: float, y0: np.ndarray, lag: np.ndarray, per_frame: int,
                      extremes: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """Run the block recursion y = u + decay y of each stream and keep each frame's extremes.

    Two detectors share the recursion and differ only in where they start: the maxima come
    from ``y`` (from ``y0``), the minima from a detector ``lag`` higher at the start, which
    stays y + lag decay^k after k blocks (the recursion is linear). ``workers.dsp`` starts a
    fresh stream's maxima from 0 and its minima settled (``lag`` = the first 125 ms' mean
    square); a continued stream has lag 0 once the two have met.

    Parameters
    ----------
    u : (blocks per lane, lanes) block rises in the lane layout of ``weighted_pass`` (lane
        k * n_streams + s: segment k of stream s).
    decay : (1 - alpha)^block; y0 : (n_streams,) detector value before the first block.
    lag : (n_streams,) >= 0, in/out: the minima detector's excess over ``y`` before the first
        block; on return, after the last block.
    per_frame : blocks per frame.
    extremes : (2, n_streams, n_frames) out: each frame's largest ``y`` and smallest ``y + lag``
        (over its block ends and its start value).

    Returns
    -------
    (n_streams,) the detector ``y`` after the last block.
    """
    blocks, lanes = u.shape
    streams = y0.shape[0]
    per_seg = blocks // per_frame
    y = y0.copy()
    for k in range(lanes // streams):
        for f in range(per_seg):
            frame = k * per_seg + f
            for s in range(streams):
                extremes[0, s, frame] = y[s]
                extremes[1, s, frame] = y[s] + lag[s]
            for p in range(f * per_frame, (f + 1) * per_frame):
                for s in range(streams):
                    y[s] = u[p, k * streams + s] + decay * y[s]
                    lag[s] *= decay
                    extremes[0, s, frame] = max(extremes[0, s, frame], y[s])
                    extremes[1, s, frame] = min(extremes[1, s, frame], y[s] + lag[s])
    return y


@njit(cache=True)
def to_lanes(raw: np.ndarray, rows: np.ndarray, xt: np.ndarray) -> None:  # pragma: no cover
    """Frames -> lanes: ``xt[j * n + i, lane] = raw[rows[j, lane], i]``, as float64.

    ``raw`` (n_frames, n); ``rows`` (frames per lane, lanes): the frame that is each lane's
    j-th. (numpy's strided copy does the same 2x slower when there are few streams.)
    """
    n = raw.shape[1]
    per_lane, lanes = rows.shape
    for j in range(per_lane):
        for i in range(n):  # the reads advance along all frames at once, the writes are contiguous
            for lane in range(lanes):
                xt[j * n + i, lane] = raw[rows[j, lane], i]


#: Only these kernels, which sum along a row, let the compiler reorder additions (so the sums
#: run as SIMD): the results move in the last bits, like numpy's own pairwise sums. The
#: recursive filters above are compiled strictly (no reordering, no fused multiply-add).
_SUMS = {"reassoc", "nsz", "nnan"}


@njit(cache=True, fastmath=_SUMS)
def frame_prep(raw: np.ndarray, lo: float, hi: float, window: np.ndarray, xw: np.ndarray,
               out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Per frame (row of ``raw``, (n_frames, n)): mean, mean square after removing it, clipping.

    Writes ``xw`` (n_frames, n) = (x - mean) * window, the rfft's input, and ``out`` (n_frames,
    3): mean (counts), mean square of x - mean (counts^2), share of samples <= lo or >= hi.
    """
    rows, n = raw.shape
    for r in range(rows):
        total = 0.0
        clipped = 0
        for i in range(n):
            v = float(raw[r, i])
            total += v
            clipped += (v <= lo) | (v >= hi)
        mean = total / n
        sq = 0.0
        for i in range(n):
            d = float(raw[r, i]) - mean
            sq += d * d
            xw[r, i] = d * window[i]
        out[r, 0] = mean
        out[r, 1] = sq / n
        out[r, 2] = clipped / n


@njit(cache=True, fastmath=_SUMS)
def spectral_features(spec: np.ndarray, scale: np.ndarray, freqs: np.ndarray, starts: np.ndarray,
                      empty: np.ndarray, bin_hz: float, bands: np.ndarray,
                      out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Band mean squares, centroid and interpolated peak of rfft rows (``workers.spectrum``).

    Parameters
    ----------
    spec : (n_frames, n_bins) complex rfft of the windowed frames.
    scale : (n_bins,) |X|^2 -> one-sided mean square per bin; freqs : (n_bins,) Hz.
    starts, empty : the bands as ``workers.spectrum._Plan`` holds them (band b sums the bins
        starts[b] .. starts[b+1] - 1, like ``np.add.reduceat``; ``empty`` bands read 0).
    bin_hz : fs / n.
    bands : (n_frames, n_bands) out, counts^2; out : (n_frames, 2): centroid Hz, peak Hz (NaN
        without power, or when the largest bin lacks a real neighbour on either side: bin 1,
        whose left one is the removed DC, or the last bin; the caller blanks the peak of
        frames under ``spectrum.MIN_PEAK_SAMPLES``).
    """
    rows, n_bins = spec.shape
    n_bands = bands.shape[1]
    p = np.empty(n_bins)
    # p >= 0, and non-negative doubles order as their bit patterns do: an integer maximum,
    # which vectorises (a floating-point one does not)
    bits = p.view(np.int64)
    tiny = 1e-300  # log(0) guard; a zero neighbour just pins the vertex to the peak bin
    for r in range(rows):
        for k in range(n_bins):
            c = spec[r, k]
            p[k] = (c.real * c.real + c.imag * c.imag) * scale[k]
        total = 0.0
        moment = 0.0
        top_bits = 0
        for k in range(n_bins):  # separate loop: plain reductions, which the compiler vectorises
            total += p[k]
            moment += p[k] * freqs[k]
            top_bits = max(top_bits, bits[k])
        for b in range(n_bands):
            acc = 0.0
            if not empty[b]:
                if starts[b + 1] > starts[b]:
                    for k in range(starts[b], starts[b + 1]):
                        acc += p[k]
                else:
                    acc = p[starts[b]]
            bands[r, b] = acc
        out[r, 0] = moment / total if total > 0 else np.nan
        if top_bits == 0:  # no power at all
            out[r, 1] = np.nan
            continue
        k = 0
        while bits[k] != top_bits:  # the first bin holding the maximum, as np.argmax
            k += 1
        if k < 2 or k > n_bins - 2:  # a neighbour is the (removed) DC bin or missing: no peak
            out[r, 1] = np.nan
            continue
        lm = np.log(max(p[k - 1], tiny))
        l0 = np.log(max(p[k], tiny))
        lp = np.log(max(p[k + 1], tiny))
        denom = lm - 2.0 * l0 + lp
        delta = min(0.5, max(-0.5, 0.5 * (lm - lp) / denom)) if denom < 0 else 0.0
        out[r, 1] = (k + delta) * bin_hz


def warm_up() -> None:
    """Compile (or load from the cache) every kernel, on a tiny input: call it at worker start."""
    sos = np.array([[1.0, 0, 0, 1, 0, 0]] * 3)
    sos.flags.writeable = False  # as workers.dsp hands them over: a read-only array is another type
    window = np.ones(4)
    window.flags.writeable = False
    x = np.zeros((4, 2))
    z = np.zeros((6, 2))
    cascade(x, sos, z)
    weighted_pass(x, sos, z, 4, 2, MODE_A, np.zeros((1, 2)), np.ones(1), np.zeros((3, 1, 2)),
                  np.zeros((1, 2, 2)))
    head_sums(x, sos, z, MODE_A, np.zeros(2), np.array([2, 4]), np.zeros((2, 2)))
    detector_extremes(np.zeros((4, 2)), 0.5, np.zeros(1), np.zeros(1), 2, np.zeros((2, 1, 4)))
    for raw in (np.zeros((2, 4), np.int16), np.zeros((2, 4))):
        to_lanes(raw, np.array([[0, 1]]), np.zeros((4, 2)))
        frame_prep(raw, -1.0, 1.0, window, np.zeros((2, 4)), np.zeros((2, 3)))
    spectral_features(np.zeros((2, 3), complex), np.ones(3), np.ones(3), np.array([0, 1, 2]),
                      np.zeros(2, np.bool_), 1.0, np.zeros((2, 2)), np.zeros((2, 2)))
