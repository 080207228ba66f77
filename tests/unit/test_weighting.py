"""Frequency weightings against IEC 61672-1:2013 Table 3 and Annex E, at every sample rate.

The expected values here come from the standard (shared/acoustics.md 1.1-1.2), written out
independently of workers/weighting.py: the Annex E formula with its published rounded
constants, the Table 3 rounded values and the class 1 acceptance limits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers import conformance, dsp, weighting

# Annex E, rounded constants as published (acoustics.md 1.2)
F1, F2, F3, F4 = 20.60, 107.7, 737.9, 12194.0
A1000, C1000 = -2.000, -0.062

# (exact Hz, A dB, C dB, class 1 upper, class 1 lower) -- IEC 61672-1:2013 Table 3
TABLE3 = [
    (10.000, -70.4, -14.3, 3.0, -math.inf), (12.589, -63.4, -11.2, 2.5, -math.inf),
    (15.849, -56.7, -8.5, 2.0, -4.0), (19.953, -50.5, -6.2, 2.0, -2.0),
    (25.119, -44.7, -4.4, 2.0, -1.5), (31.623, -39.4, -3.0, 1.5, -1.5),
    (39.811, -34.6, -2.0, 1.0, -1.0), (50.119, -30.2, -1.3, 1.0, -1.0),
    (63.096, -26.2, -0.8, 1.0, -1.0), (79.433, -22.5, -0.5, 1.0, -1.0),
    (100.00, -19.1, -0.3, 1.0, -1.0), (125.89, -16.1, -0.2, 1.0, -1.0),
    (158.49, -13.4, -0.1, 1.0, -1.0), (199.53, -10.9, 0.0, 1.0, -1.0),
    (251.19, -8.6, 0.0, 1.0, -1.0), (316.23, -6.6, 0.0, 1.0, -1.0),
    (398.11, -4.8, 0.0, 1.0, -1.0), (501.19, -3.2, 0.0, 1.0, -1.0),
    (630.96, -1.9, 0.0, 1.0, -1.0), (794.33, -0.8, 0.0, 1.0, -1.0),
    (1000.0, 0.0, 0.0, 0.7, -0.7), (1258.9, 0.6, 0.0, 1.0, -1.0),
    (1584.9, 1.0, -0.1, 1.0, -1.0), (1995.3, 1.2, -0.2, 1.0, -1.0),
    (2511.9, 1.3, -0.3, 1.0, -1.0), (3162.3, 1.2, -0.5, 1.0, -1.0),
    (3981.1, 1.0, -0.8, 1.0, -1.0), (5011.9, 0.5, -1.3, 1.5, -1.5),
    (6309.6, -0.1, -2.0, 1.5, -2.0), (7943.3, -1.1, -3.0, 1.5, -2.5),
    (10000, -2.5, -4.4, 2.0, -3.0), (12589, -4.3, -6.2, 2.0, -5.0),
    (15849, -6.6, -8.5, 2.5, -16.0), (19953, -9.3, -11.2, 3.0, -math.inf),
]
RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000]


def annex_e_a(f: float) -> float:
    f2 = f * f
    return 20 * math.log10(F4**2 * f2**2 / ((f2 + F1**2) * math.sqrt(f2 + F2**2)
                                             * math.sqrt(f2 + F3**2) * (f2 + F4**2))) - A1000


def annex_e_c(f: float) -> float:
    f2 = f * f
    return 20 * math.log10(F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2))) - C1000


def tone_gain_db(name: str, rate: int, freqs: list[float]) -> np.ndarray:
    """Weighted minus unweighted level of 3 s tones, measured over the last 2 s."""
    n = rate // 2
    t = np.arange(6 * n) / rate
    x = 10000.0 * np.sin(2 * np.pi * np.asarray(freqs)[:, None] * t)
    feats, _ = dsp.analyse_streams(x.reshape(len(freqs), 6, n), rate, [None] * len(freqs))
    key = {"A": "laeq", "C": "lceq"}[name]
    level = 10 * np.log10(np.mean(10 ** (feats[key][:, 2:] / 10), axis=1))
    return level - 20 * np.log10(10000.0 / math.sqrt(2) / 32768)


def test_design_goal_reproduces_table3_values():
    """The design goal at the exact frequencies rounds to every Table 3 A and C value."""
    for f, a, c, *_ in TABLE3:
        assert float(weighting.a_weighting_db(f)) == pytest.approx(a, abs=0.05), f
        assert float(weighting.c_weighting_db(f)) == pytest.approx(c, abs=0.05), f
        assert float(weighting.a_weighting_db(f)) == pytest.approx(annex_e_a(f), abs=0.005)
        assert float(weighting.c_weighting_db(f)) == pytest.approx(annex_e_c(f), abs=0.005)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("name", ["A", "C"])
def test_tones_at_table3_frequencies_are_class_1(name, rate):
    """Tones at every Table 3 frequency below 0.45 fs read the Annex E goal within class 1."""
    rows = [r for r in TABLE3 if r[0] < 0.45 * rate]
    measured = tone_gain_db(name, rate, [r[0] for r in rows])
    for (f, *_, upper, lower), got in zip(rows, measured, strict=True):
        goal = annex_e_a(f) if name == "A" else annex_e_c(f)
        assert lower <= got - goal <= upper, (name, rate, f, got - goal)
        # and far tighter than the limits: the fit is good to a tenth of a dB
        assert abs(got - goal) < 0.1, (name, rate, f, got - goal)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_accuracy_table_measurement_is_class_1(rate):
    """The measurement behind docs/measurement.md's accuracy table is class 1 at each rate."""
    for name in ("A", "C"):
        rows = conformance.table3(name, rate)
        assert rows and all(r.ok for r in rows), [(r.nominal_hz, r.deviation_db) for r in rows]


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_c_or_z_against_a_at_1_khz(rate):
    """At 1 kHz, C and Z read the A level within 0.2 dB (IEC 61672-1 5.5.9)."""
    gains = [tone_gain_db(name, rate, [1000.0])[0] for name in ("A", "C")]
    assert abs(gains[0] - gains[1]) <= 0.2 and abs(gains[0]) <= 0.2


def test_weighting_filters_block_dc_and_are_stable():
    """Every filter has its zeros at 0 Hz and its poles inside the unit circle."""
    for rate in (8000, 12000, 16000, 24000, 44100, 48000, 96000):
        for name in ("A", "C"):
            sos = weighting.design(name, float(rate))
            for section in sos:
                assert np.all(np.abs(np.roots(section[3:])) < 1.0)
            assert float(weighting.response_db(name, rate, 0.01)[0]) < -100


def test_plain_bilinear_would_fail_at_8_khz():
    """The reason for the fitted sections: a plain bilinear A filter misses class 1 at 8 kHz."""
    from scipy import signal

    w = [2 * math.pi * f for f in (F1, F1, F2, F3, F4, F4)]
    z, p, k = signal.bilinear_zpk([0, 0, 0, 0], [-x for x in w], w[4] ** 2, 8000)
    _, h = signal.freqz_zpk(z, p, k, worN=[1000.0, 3162.3], fs=8000)
    dev = 20 * np.log10(np.abs(h[1]) / np.abs(h[0])) - annex_e_a(3162.3)
    assert dev < -1.0  # class 1 lower limit at 3150 Hz
