"""Building blocks of synthetic sound: keyed noise, tones and envelopes, in Pa. Pure numpy.

``soundmon.scenes`` composes these into the simulator's scenes. Everything works on one
aligned block of ``BLOCK_SAMPLES`` at a time and depends on nothing but (seed, block
index), so any split of a time range renders identical samples and blocks join exactly.

Coloured noise is normalised to unit A-weighted rms, so a component's level is set in
dB(A) directly; tones take dB(A) or dB(Z). Noise is read from a circular bank rendered
once per colour and rate, each source at its own offset: a block costs a slice instead of
a filter, which lets one core feed thousands of frames per second. The noise repeats after
``BANK_SAMPLES`` (131 s at 8 kHz); the scenes' envelopes and events do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from workers.dsp import a_weighting_db

P_REF_PA = 20e-6  # reference pressure of dB SPL
# Unit of computation: 8192 samples (1.02 s at 8 kHz) keeps per-call overhead small.
BLOCK_SAMPLES = 8192
# Length of each colour's noise bank: 2^20 samples, a fast FFT size, is 131 s at 8 kHz
# (4 MB as float32), long enough that nobody hears or measures the loop.
BANK_SAMPLES = 1 << 20
# Slow envelopes are computed every 64 samples (8 ms at 8 kHz) and interpolated linearly:
# far finer than any envelope here changes. Must divide BLOCK_SAMPLES.
SMOOTH_STEP = 64


def db_to_pa(level_db: np.ndarray | float) -> np.ndarray:
    """RMS sound pressure in Pa of a level in dB SPL."""
    return P_REF_PA * 10.0 ** (np.asarray(level_db, dtype=float) / 20.0)


def _highpass(f: np.ndarray, corner_hz: float, order: int) -> np.ndarray:
    """Butterworth-like magnitude response (no phase: it only shapes noise spectra)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(1.0 + (corner_hz / f) ** (2 * order))


def _lowpass(f: np.ndarray, corner_hz: float, order: int) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / corner_hz) ** (2 * order))


def _tilt(f: np.ndarray, from_hz: float, db_per_octave: float) -> np.ndarray:
    """Flat below ``from_hz``, then ``db_per_octave`` (negative: falling)."""
    octaves = np.log2(np.maximum(f, from_hz) / from_hz)
    return 10.0 ** (db_per_octave * octaves / 20.0)


#: Noise colours: amplitude response as a function of frequency in Hz (scale is irrelevant).
COLOURS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # -3 dB/octave (1/f power) from 20 Hz: the usual model of a room's diffuse background
    "pink": lambda f: _highpass(f, 20.0, 2) * _tilt(f, 20.0, -3.0),
    # long-term speech spectrum: 200 Hz - 4 kHz, falling 6 dB/octave above 500 Hz
    "speech": lambda f: _highpass(f, 200.0, 2) * _lowpass(f, 4000.0, 4) * _tilt(f, 500.0, -6.0),
    # engines and tyres on a road surface: mostly below 160 Hz
    "rumble": lambda f: _highpass(f, 25.0, 2) * _lowpass(f, 160.0, 4),
    # a shout, a slammed door, a dropped crate: energy where the ear is most sensitive
    "crash": lambda f: _highpass(f, 400.0, 2) * _lowpass(f, 3500.0, 4),
}


@lru_cache(maxsize=16)
def noise_bank(colour: str, rate_hz: int) -> np.ndarray:
    """One circular recording of ``colour`` noise at ``rate_hz``, unit A-weighted rms.

    Gaussian noise is shaped in the frequency domain over the whole bank, so the bank is
    exactly periodic (it loops without a seam) and its A-weighted rms is exactly 1.

    Returns
    -------
    ndarray, shape (BANK_SAMPLES,), float32. All zeros when the colour has no energy
    below ``rate_hz / 2``.
    """
    rng = np.random.default_rng(list(colour.encode()))  # fixed: the same bank every run
    bins = BANK_SAMPLES // 2 + 1
    freqs = np.fft.rfftfreq(BANK_SAMPLES, 1.0 / rate_hz)
    gain = np.zeros(bins)
    gain[1:] = COLOURS[colour](freqs[1:])
    spectrum = gain * (rng.standard_normal(bins) + 1j * rng.standard_normal(bins))
    spectrum[-1] = spectrum[-1].real  # the Nyquist bin of a real signal is real
    # A-weighted mean square by Parseval: (|X0|^2 + 2 sum |Xk|^2 + |X_N/2|^2) / N^2
    gain_a = np.zeros(bins)
    gain_a[1:] = 10.0 ** (a_weighting_db(freqs[1:]) / 10.0)
    bin_weight = np.full(bins, 2.0)
    bin_weight[[0, -1]] = 1.0
    power_a = float(np.sum(bin_weight * gain_a * np.abs(spectrum) ** 2)) / BANK_SAMPLES**2
    if power_a == 0.0:
        return np.zeros(BANK_SAMPLES, dtype=np.float32)
    return (np.fft.irfft(spectrum, BANK_SAMPLES) / np.sqrt(power_a)).astype(np.float32)


@lru_cache(maxsize=64)
def _sin_cos_table(freq_hz: float, rate_hz: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of 2 pi f n / fs for n in one block, float64, shape (BLOCK_SAMPLES,)."""
    step = 2.0 * np.pi * freq_hz / rate_hz * np.arange(BLOCK_SAMPLES)
    return np.sin(step), np.cos(step)


# Keyed random numbers and weightings are pure functions of their arguments; a block asks
# for the same ones as its neighbours, so memoising them saves a generator per call.


@lru_cache(maxsize=4096)
def _knot(seed: int, stream: int, k: int) -> float:
    return float(np.random.default_rng([seed, stream, k]).random())


@lru_cache(maxsize=1024)
def _bank_offset(seed: int, stream: int) -> int:
    """Where source ``stream`` of ``seed`` starts reading its colour's bank."""
    return int(np.random.default_rng([seed, stream]).integers(BANK_SAMPLES))


@lru_cache(maxsize=256)
def _a_weighting_db(freq_hz: float) -> float:
    return float(a_weighting_db(freq_hz))


@dataclass(frozen=True)
class Block:
    """What a scene function sees: one aligned block of samples and keyed randomness.

    Block ``index`` covers samples ``[index * BLOCK_SAMPLES, (index + 1) * BLOCK_SAMPLES)``
    of a stream at ``rate_hz``. ``seed`` picks one of many equally valid renderings.
    """

    index: int
    rate_hz: int
    seed: int

    @cached_property
    def t_s(self) -> np.ndarray:
        """Time of each sample in s from the start of the stream, shape (BLOCK_SAMPLES,)."""
        first = self.index * BLOCK_SAMPLES
        return np.arange(first, first + BLOCK_SAMPLES) / self.rate_hz

    def noise(self, colour: str, stream: int) -> np.ndarray:
        """Noise of ``colour`` with unit A-weighted rms, continuous across blocks.

        Each ``stream`` number is an independent source: give each component its own.
        Returns shape (BLOCK_SAMPLES,), float32.
        """
        bank = noise_bank(colour, self.rate_hz)
        start = (_bank_offset(self.seed, stream) + self.index * BLOCK_SAMPLES) % BANK_SAMPLES
        if start + BLOCK_SAMPLES <= BANK_SAMPLES:
            return bank[start:start + BLOCK_SAMPLES]
        return np.concatenate((bank[start:], bank[:start + BLOCK_SAMPLES - BANK_SAMPLES]))

    def knot(self, stream: int, k: int) -> float:
        """A uniform number in [0, 1) tied to the integer ``k`` (not to the block)."""
        return _knot(self.seed, stream, k)

    def smooth(self, stream: int, period_s: float) -> np.ndarray:
        """A slow random curve in [0, 1], shape (BLOCK_SAMPLES,).

        A new random value every ``period_s``, joined by cosine interpolation. It is
        evaluated every ``SMOOTH_STEP`` samples (aligned to the stream, not the block) and
        joined linearly in between: continuous everywhere and 30x cheaper.
        """
        first = self.index * BLOCK_SAMPLES
        grid = np.arange(first, first + BLOCK_SAMPLES + 1, SMOOTH_STEP) / self.rate_hz / period_s
        k = np.floor(grid).astype(np.int64)
        k0 = int(k[0])
        values = np.array([self.knot(stream, j) for j in range(k0, int(k[-1]) + 2)])
        w = 0.5 - 0.5 * np.cos(np.pi * (grid - k))
        coarse = values[k - k0] * (1.0 - w) + values[k - k0 + 1] * w
        step = np.arange(SMOOTH_STEP) / SMOOTH_STEP
        fine = coarse[:-1, None] + (coarse[1:] - coarse[:-1])[:, None] * step
        return fine.ravel()

    def tone(self, freq_hz: float, level_db: float, phase: float = 0.0,
             a_weighted: bool = True) -> np.ndarray:
        """A sine in Pa at ``level_db`` SPL: dB(A) if ``a_weighted`` else unweighted (Z).

        sin(a + b) = sin a cos b + cos a sin b, with ``a`` the phase at the block's first
        sample (exact in float64 at any time) and ``b`` from a cached table: 6x cheaper
        than calling sin on every sample.
        """
        if a_weighted:
            level_db = level_db - _a_weighting_db(freq_hz)
        amplitude = np.sqrt(2.0) * db_to_pa(level_db)
        cycles = (freq_hz * self.index * BLOCK_SAMPLES / self.rate_hz) % 1.0
        start = 2.0 * np.pi * cycles + phase
        sin_step, cos_step = _sin_cos_table(freq_hz, self.rate_hz)
        return amplitude * (np.sin(start) * cos_step + np.cos(start) * sin_step)


def gate(t_s: np.ndarray, start_s: np.ndarray | float, length_s: np.ndarray | float,
         ramp_s: float) -> np.ndarray:
    """1 inside ``[start, start + length)``, 0 outside, with smoothstep ramps of ``ramp_s``
    at both ends (continuous slope, so a switched sound does not click)."""
    rise = np.clip((t_s - start_s) / ramp_s, 0.0, 1.0)
    fall = np.clip((start_s + length_s - t_s) / ramp_s, 0.0, 1.0)
    return rise * rise * (3.0 - 2.0 * rise) * fall * fall * (3.0 - 2.0 * fall)
