"""IEC 61672-1:2013 frequency weightings A, C and Z: the design goal and digital filters for any rate.

The design goal is the Annex E analytic formula with its exact constants (derived below, not
the rounded ones). The digital filters are cascades of second-order sections (SOS) designed
per sample rate and cached:

* C = bilinear transform of the two low-frequency poles at f1 (exact enough there: warping is
  below 0.01 % at 20 Hz even at 8 kHz) times one *fitted* biquad standing in for the double
  pole at f4 = 12.2 kHz. At 8-16 kHz f4 lies above Nyquist, so no bilinear image of it can
  follow the analog curve near fs/2; the fitted biquad is solved by least squares on the dB
  error between 10 Hz and 0.45 fs against the exact design goal, so it is right at every rate.
* A = the C cascade times a second fitted biquad for the poles at f2 and f3 (and their two
  zeros at 0 Hz), fitted the same way against A(f) - C(f).
* Z = no filter (flat).

Why not the alternatives (shared/acoustics.md section 2): a plain bilinear A filter fails
class 1 at the 8-20 kHz rates an ESP32 ADC gives; weighting the FFT of each frame is exact at
the bin frequencies but leaks a low-frequency tone that is not on a bin into bins where A is
up to 50 dB higher, and it has no time signal for the Fast detector or the C peak. A
time-domain IIR also carries its state from one frame to the next (``zi``), so a stream cut
into frames measures exactly as the uncut stream.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import optimize, signal

# ---- IEC 61672-1:2013 Annex E constants, derived exactly (E.2-E.5) ---------------------------
_FL = 10**1.5  # Hz, low-frequency corner of the C/A design (Annex E)
_FH = 10**3.9  # Hz, high-frequency corner
_FR = 1000.0  # Hz, reference frequency
_FA = 10**2.45  # Hz, A-weighting extra corner
_D = np.sqrt(0.5)  # D^2 = 1/2
_b = (_FR**2 + _FL**2 * _FH**2 / _FR**2 - _D * (_FL**2 + _FH**2)) / (1 - _D)
_c = _FL**2 * _FH**2
F1 = float(np.sqrt((-_b - np.sqrt(_b**2 - 4 * _c)) / 2))  # 20.598997 Hz
F4 = float(np.sqrt((-_b + np.sqrt(_b**2 - 4 * _c)) / 2))  # 12194.217 Hz
F2 = float((3 - np.sqrt(5)) / 2 * _FA)  # 107.65265 Hz
F3 = float((3 + np.sqrt(5)) / 2 * _FA)  # 737.86223 Hz

WEIGHTINGS = ("A", "C", "Z")
#: The weighting filters are fitted (and certified, see docs/measurement.md) up to this
#: fraction of the sample rate, the band IEC 61672-1 conformance is checked in here.
FIT_TOP = 0.45
#: Lowest frequency of the fit grid: Table 3 starts at 10 Hz.
FIT_BOTTOM_HZ = 10.0


def _c_raw_db(f: np.ndarray) -> np.ndarray:
    f2 = np.square(f)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2)))


def _a_raw_db(f: np.ndarray) -> np.ndarray:
    f2 = np.square(f)
    with np.errstate(divide="ignore"):
        num = F4**2 * f2**2
        den = (f2 + F1**2) * np.sqrt((f2 + F2**2) * (f2 + F3**2)) * (f2 + F4**2)
        return 20.0 * np.log10(num / den)


_A1000 = float(_a_raw_db(np.array(1000.0)))  # -1.999656 dB: normalises A(1 kHz) to 0
_C1000 = float(_c_raw_db(np.array(1000.0)))  # -0.061902 dB


def a_weighting_db(freq_hz: np.ndarray | float) -> np.ndarray:
    """A-weighting design goal in dB at ``freq_hz`` (IEC 61672-1 eq. E.6); -inf at 0 Hz."""
    return _a_raw_db(np.asarray(freq_hz, dtype=float)) - _A1000


def c_weighting_db(freq_hz: np.ndarray | float) -> np.ndarray:
    """C-weighting design goal in dB at ``freq_hz`` (IEC 61672-1 eq. E.1); -inf at 0 Hz."""
    return _c_raw_db(np.asarray(freq_hz, dtype=float)) - _C1000


def design_goal_db(weighting: str, freq_hz: np.ndarray | float) -> np.ndarray:
    """The design goal of ``weighting`` ("A", "C" or "Z") in dB at ``freq_hz``."""
    if weighting == "A":
        return a_weighting_db(freq_hz)
    if weighting == "C":
        return c_weighting_db(freq_hz)
    if weighting == "Z":
        return np.zeros_like(np.asarray(freq_hz, dtype=float))
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


def _grid(rate_hz: float) -> np.ndarray:
    # Log-spaced: the fit minimises dB error per decade evenly, as Table 3 is log-spaced.
    return np.geomspace(FIT_BOTTOM_HZ, FIT_TOP * rate_hz, 400)


def _biquad_db(p: np.ndarray, f: np.ndarray, rate_hz: float) -> np.ndarray:
    """|H| in dB of the biquad b = p[0:3], a = [1, p[3], p[4]] at ``f`` Hz."""
    z = np.exp(-2j * np.pi * f / rate_hz)  # z^-1
    h = (p[0] + p[1] * z + p[2] * z * z) / (1.0 + p[3] * z + p[4] * z * z)
    return 20.0 * np.log10(np.maximum(np.abs(h), 1e-30))


def _sos_db(sos: np.ndarray, f: np.ndarray, rate_hz: float) -> np.ndarray:
    _, h = signal.sosfreqz(sos, worN=f, fs=rate_hz)
    return 20.0 * np.log10(np.maximum(np.abs(h), 1e-30))


def _fit_biquad(target_db: np.ndarray, f: np.ndarray, rate_hz: float, start: np.ndarray) -> np.ndarray:
    """Least-squares biquad (as an SOS row) whose dB response follows ``target_db`` on ``f``.

    ``start`` is ``[b0, b1, b2, a1, a2]``; all five are free (used for the f4 low-pass).
    """
    res = optimize.least_squares(lambda p: _biquad_db(p, f, rate_hz) - target_db, start,
                                 method="lm", xtol=1e-12, ftol=1e-12, max_nfev=20000)
    p = res.x
    poles = np.roots([1.0, p[3], p[4]])
    outside = np.abs(poles) > 1.0
    if outside.any():
        # A magnitude fit cannot tell a pole p from its mirror 1/conj(p): both give the same
        # |H| up to a constant. Keep the stable one and put the constant back into the gain.
        poles = np.where(outside, 1.0 / np.conj(poles), poles)
        a = np.real(np.poly(poles))
        p = np.array([p[0], p[1], p[2], a[1], a[2]])
        p[:3] *= 10 ** (np.mean(target_db - _biquad_db(p, f, rate_hz)) / 20)
    _check_stable(p[3:], rate_hz)
    return np.array([p[0], p[1], p[2], 1.0, p[3], p[4]])


def _fit_highpass(target_db: np.ndarray, f: np.ndarray, rate_hz: float,
                  poles_hz: tuple[float, float]) -> np.ndarray:
    """Least-squares biquad g (1 - z^-1)^2 / ((1 - p1 z^-1)(1 - p2 z^-1)) following ``target_db``.

    The double zero stays exactly at z = 1 (0 Hz), so the section blocks DC whatever the fit;
    only the gain and the two real poles move (started from their matched-z positions).
    """
    def params(q: np.ndarray) -> np.ndarray:
        g, p1, p2 = np.exp(q[0]), q[1], q[2]
        return np.array([g, -2 * g, g, -(p1 + p2), p1 * p2])

    start = np.array([0.0, *np.exp(-2 * np.pi * np.asarray(poles_hz) / rate_hz)])
    res = optimize.least_squares(lambda q: _biquad_db(params(q), f, rate_hz) - target_db, start,
                                 bounds=([-20.0, 0.0, 0.0], [20.0, 1.0 - 1e-9, 1.0 - 1e-9]),
                                 xtol=1e-14, ftol=1e-14, max_nfev=20000)
    p = params(res.x)
    _check_stable(p[3:], rate_hz)
    return np.array([p[0], p[1], p[2], 1.0, p[3], p[4]])


def _check_stable(a: np.ndarray, rate_hz: float) -> None:
    if np.any(np.abs(np.roots([1.0, a[0], a[1]])) >= 1.0 - 1e-9):
        raise RuntimeError(f"fitted weighting section is unstable at {rate_hz} Hz")


def _bilinear_sos(zeros_hz: list[float], poles_hz: list[float], rate_hz: float,
                  gain: float = 1.0) -> np.ndarray:
    z = -2 * np.pi * np.asarray(zeros_hz, dtype=float)
    p = -2 * np.pi * np.asarray(poles_hz, dtype=float)
    zd, pd, kd = signal.bilinear_zpk(z, p, gain, rate_hz)
    return signal.zpk2sos(zd, pd, kd)


def _lowpass_start(rate_hz: float) -> np.ndarray:
    """Start of the f4 fit: the bilinear image of the analog double pole (always stable)."""
    sos = _bilinear_sos([], [F4, F4], rate_hz, gain=(2 * np.pi * F4) ** 2)[0]  # 0 dB at DC
    return np.array([sos[0], sos[1], sos[2], sos[4], sos[5]])


@lru_cache(maxsize=64)
def design(weighting: str, rate_hz: float) -> np.ndarray:
    """Second-order sections of the ``weighting`` filter at ``rate_hz``.

    Parameters
    ----------
    weighting : {"A", "C", "Z"}
    rate_hz : float
        Sample rate in Hz; the filters are verified for 8000-48000 Hz.

    Returns
    -------
    ndarray, shape (n_sections, 6)
        ``scipy.signal.sosfilt`` layout; ``Z`` has no sections (shape (0, 6)).
    """
    if weighting == "Z":
        return np.zeros((0, 6))
    f = _grid(rate_hz)
    if weighting == "C":
        hp_c = _bilinear_sos([0.0, 0.0], [F1, F1], rate_hz)  # zeros at DC stay exactly at z = 1
        lp = _fit_biquad(c_weighting_db(f) - _sos_db(hp_c, f, rate_hz), f, rate_hz,
                         _lowpass_start(rate_hz))
        return np.vstack([hp_c, lp])
    if weighting != "A":
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    sos_c = design("C", rate_hz)
    mid = _fit_highpass(a_weighting_db(f) - _sos_db(sos_c, f, rate_hz), f, rate_hz, (F2, F3))
    return np.vstack([sos_c, mid])


def response_db(weighting: str, rate_hz: float, freq_hz: np.ndarray | float) -> np.ndarray:
    """Magnitude response in dB of the designed digital filter (from its coefficients)."""
    f = np.atleast_1d(np.asarray(freq_hz, dtype=float))
    sos = design(weighting, float(rate_hz))
    return np.zeros_like(f) if len(sos) == 0 else _sos_db(sos, f, float(rate_hz))
