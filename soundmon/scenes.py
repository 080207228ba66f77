"""The simulator's sound scenes, declared once, and how they become ADC samples. No I/O.

A scene maps time to sound pressure in Pa (built from ``soundmon.synth``). ``render`` turns
it into what a MAX4466 board on an ESP32 ADC sends: int16 counts with
``dBFS = dB SPL - K`` (K = the max4466 profile's default), plus the front end's DC bias,
clipped at the ADC rails. Component levels are in dB(A) SPL, so each scene's documented
LAeq range can be read off its code; the tests measure it with the workers' own DSP.
Rendering is deterministic given a seed and continuous: consecutive calls join exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from soundmon.profiles import PROFILES
from soundmon.synth import BLOCK_SAMPLES, P_REF_PA, Block, db_to_pa, gate

K_DB = PROFILES["max4466"].default_k_db  # dB SPL at 0 dBFS for the simulated front end
# The MAX4466 output sits at VCC/2, which is close to but not exactly the ADC's mid-code;
# +300 counts (about 19 of 4096 codes, ~15 mV) is a typical offset seen on these boards.
DC_BIAS_COUNTS = 300
# ESP32 12-bit codes 0 and 4095 mapped by (c - 2048) * 16 (protocol.md section 2)
ADC_RAIL_LOW = -32768
ADC_RAIL_HIGH = 32752
FULL_SCALE = 32768.0


# Scene functions: Block -> sound pressure in Pa, shape (BLOCK_SAMPLES,). Levels in dB(A) SPL.
# Each noise component, slow curve and event list uses its own stream number.


def _quiet(b: Block) -> np.ndarray:
    """Quiet room: pink noise at 38 dB(A), drifting +-2 dB over a few seconds."""
    level = 38.0 + 4.0 * (b.smooth(1, period_s=5.0) - 0.5)
    return db_to_pa(level) * b.noise("pink", 0)


def _office(b: Block) -> np.ndarray:
    """Open-plan office: a 50 dB(A) background and speech-band chatter in bursts."""
    background = db_to_pa(50.0) * b.noise("pink", 0)
    # talk spurts: someone is talking whenever the slow curve is above 0.3 (about 65 % of
    # the time), faded in and out over 0.2 of its range so bursts swell rather than switch
    talking = np.clip((b.smooth(1, period_s=1.5) - 0.3) / 0.2, 0.0, 1.0)
    # syllables: speech energy is modulated at about 4 Hz
    syllables = 0.25 + 0.75 * (0.5 - 0.5 * np.cos(2.0 * np.pi * 4.0 * b.t_s))
    speech = db_to_pa(66.0) * talking * syllables * b.noise("speech", 2)
    return background + speech


def _street(b: Block) -> np.ndarray:
    """Kerbside: traffic noise that swells as vehicles pass, over a low-frequency rumble."""
    swell = b.smooth(1, period_s=4.0) ** 2  # squared: short loud passes, longer lulls
    level = 65.5 + 8.0 * swell
    traffic = db_to_pa(level) * b.noise("pink", 0)
    # rumble 8 dB below in dB(A) is about 15 dB above the traffic in dB(Z)
    rumble = db_to_pa(level - 8.0) * b.noise("rumble", 2)
    return traffic + rumble


def _machinery(b: Block) -> np.ndarray:
    """Plant room: hum at twice the mains frequency with harmonics, over broadband noise."""
    # transformers and motors hum at 2 x mains: 100 Hz on 50 Hz grids, 120 Hz on 60 Hz grids
    f0 = 100.0 if b.knot(3, 0) < 0.5 else 120.0
    load = 1.5 * (b.smooth(1, period_s=3.0) - 0.5)  # +-0.75 dB as the load varies
    phases = 2.0 * np.pi * np.random.default_rng([b.seed, 4]).random(7)  # fixed per seed
    hum = sum(
        # harmonic h at 71 - 2 (h - 1) dB(A); above the 6th they add under 0.5 dB(A)
        b.tone(h * f0, 71.0 - 2.0 * (h - 1), phase=phases[h])
        for h in range(1, 7)
    )
    broadband = db_to_pa(67.0) * b.noise("pink", 0)
    return 10.0 ** (load / 20.0) * (hum + broadband)


def _alarm(b: Block) -> np.ndarray:
    """Alarm sounder: a 3 kHz tone beeping 4 times a second at 90.5 dB(A), half on."""
    period_s = 0.25  # 4 beeps/s: every 250 ms-aligned frame holds whole beeps
    start = np.floor(b.t_s / period_s) * period_s
    beeping = gate(b.t_s, start, period_s / 2.0, ramp_s=0.005)  # 5 ms: no click
    background = db_to_pa(55.0) * b.noise("pink", 0)
    return background + beeping * b.tone(3000.0, 90.5)


def _loud(b: Block) -> np.ndarray:
    """A 60 dB(A) background with one loud event in every 10 s: 85-95 dB(A) for 1-3 s."""
    slot_s = 10.0
    slot = np.floor(b.t_s / slot_s)
    events = np.zeros_like(b.t_s)
    for k in np.unique(slot).astype(int):
        start = k * slot_s + 0.5 + 6.0 * b.knot(1, 3 * k)  # starts 0.5-6.5 s into the slot
        length = 1.0 + 2.0 * b.knot(1, 3 * k + 1)  # so it always ends inside its slot
        level = 85.0 + 10.0 * b.knot(1, 3 * k + 2)
        here = slot == k
        events[here] = db_to_pa(level) * gate(b.t_s[here], start, length, ramp_s=0.05)
    return db_to_pa(60.0) * b.noise("pink", 0) + events * b.noise("crash", 2)


#: the ``event`` scene: one 20 s loud event, EVENT_START_S into every EVENT_PERIOD_S
EVENT_START_S, EVENT_LENGTH_S, EVENT_PERIOD_S = 60.0, 20.0, 600.0


def _event(b: Block) -> np.ndarray:
    """A 65 dB(A) background and one 20 s event at 90 dB(A) a minute in, every 10 minutes.

    Made for alerts: with the default rules (60-80 dB(A)) it raises exactly one
    ``level_high`` alert per event, which resolves about 10 s after the event ends.
    """
    start = np.floor(b.t_s / EVENT_PERIOD_S) * EVENT_PERIOD_S + EVENT_START_S
    loud = gate(b.t_s, start, EVENT_LENGTH_S, ramp_s=0.05)
    # a steady 250 Hz hum keeps the dominant frequency in band: pink noise alone puts it
    # at the lowest bins, sometimes under 20 Hz, which would raise freq_low alerts
    background = db_to_pa(62.0) * b.noise("pink", 0) + b.tone(250.0, 62.0)
    return background + db_to_pa(90.0) * loud * b.noise("crash", 2)


@dataclass(frozen=True)
class Scene:
    """A named sound scene.

    ``laeq_db`` is the (low, high) range, inclusive, of its LAeq in dB(A) over each 10 s
    from the start (0-10 s, 10-20 s ...). Steady scenes keep it over any 10 s; ``loud``
    only over those slots, as each holds exactly one event.
    """

    name: str
    summary: str
    laeq_db: tuple[float, float]
    pressure_pa: Callable[[Block], np.ndarray]


#: Every scene, declared once: this table drives the simulator, its --help and the tests.
SCENES: dict[str, Scene] = {s.name: s for s in (
    Scene("quiet", "quiet room, pink noise, 35-42 dB(A)", (35.0, 42.0), _quiet),
    Scene("office", "chatter in bursts over a 50 dB(A) background, 55-65 dB(A)", (55.0, 65.0),
          _office),
    Scene("street", "traffic swells and low rumble, 65-75 dB(A)", (65.0, 75.0), _street),
    Scene("machinery", "100/120 Hz hum, harmonics and broadband noise, 72-78 dB(A)",
          (72.0, 78.0), _machinery),
    Scene("alarm", "3 kHz beeping alarm, 85-90 dB(A)", (85.0, 90.0), _alarm),
    # one 1-3 s event at 85-95 dB(A) per 10 s: LAeq,10s from 74 (1 s at 85) to 90 (3 s at 95)
    Scene("loud", "60 dB(A) background, events up to 95 dB(A) for 1-3 s", (74.0, 90.0), _loud),
    # LAeq,10s is 65 dB(A) outside the event and up to 90 dB(A) during it
    Scene("event", "65 dB(A) background, one 20 s event at 90 dB(A) from 60 s, every 10 min",
          (64.0, 90.5), _event),
)}


def tone_scene(freq_hz: float, level_db: float) -> Scene:
    """A steady sine at ``level_db`` SPL, unweighted (Z): a known level for tests."""
    return Scene(f"tone-{freq_hz:g}hz-{level_db:g}db", f"{freq_hz:g} Hz at {level_db:g} dB SPL",
                 (level_db, level_db),
                 lambda b: b.tone(freq_hz, level_db, a_weighted=False))


def _scene(scene: str | Scene) -> Scene:
    if isinstance(scene, Scene):
        return scene
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; known: {', '.join(SCENES)}")
    return SCENES[scene]


def render_block(scene: str | Scene, index: int, rate_hz: int, seed: int = 0,
                 k_db: float = K_DB, dc_counts: int = DC_BIAS_COUNTS) -> np.ndarray:
    """Block ``index`` of a scene as the ADC sends it.

    Returns
    -------
    ndarray, shape (BLOCK_SAMPLES,), int16 counts: ``pressure / P_REF`` scaled so that
    ``dBFS = dB SPL - k_db``, plus ``dc_counts``, rounded and clipped to the ADC rails.
    """
    assert index >= 0 and 0 < rate_hz <= 0xFFFF
    pressure = _scene(scene).pressure_pa(Block(index, rate_hz, seed))
    counts_per_pa = FULL_SCALE * 10.0 ** (-k_db / 20.0) / P_REF_PA
    counts = np.rint(pressure * counts_per_pa + dc_counts)
    return np.clip(counts, ADC_RAIL_LOW, ADC_RAIL_HIGH).astype(np.int16)


def render(scene: str | Scene, t_s: float, n: int, rate_hz: int, seed: int = 0,
           k_db: float = K_DB, dc_counts: int = DC_BIAS_COUNTS) -> np.ndarray:
    """``n`` samples of a scene starting at ``t_s`` seconds (>= 0) into the stream.

    Deterministic given ``seed``, and continuous: consecutive calls join exactly.

    Returns
    -------
    ndarray, shape (n,), int16 counts (see ``render_block``).
    """
    first = round(t_s * rate_hz)
    assert first >= 0 and n >= 0
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    blocks = range(first // BLOCK_SAMPLES, (first + n - 1) // BLOCK_SAMPLES + 1)
    out = np.concatenate([render_block(scene, i, rate_hz, seed, k_db, dc_counts) for i in blocks])
    skip = first - blocks[0] * BLOCK_SAMPLES
    return out[skip:skip + n]


def render_tone(freq_hz: float, level_db: float, n: int, rate_hz: int, t_s: float = 0.0,
                k_db: float = K_DB, dc_counts: int = DC_BIAS_COUNTS) -> np.ndarray:
    """``n`` int16 samples of a sine at ``level_db`` dB SPL (Z) as the ADC sends it."""
    return render(tone_scene(freq_hz, level_db), t_s, n, rate_hz, 0, k_db, dc_counts)


class SceneStream:
    """Reads a scene frame after frame, rendering each block once (for the simulator)."""

    def __init__(self, scene: str | Scene, rate_hz: int, seed: int = 0) -> None:
        self.scene = _scene(scene)
        self.rate_hz = rate_hz
        self.seed = seed
        self.position = 0  # index of the next sample to read
        self._block_index = -1
        self._block = np.zeros(0, dtype=np.int16)

    def warm(self) -> None:
        """Render the block at the read position now (before a timed run starts)."""
        self._load(self.position // BLOCK_SAMPLES)

    def _load(self, index: int) -> None:
        if index != self._block_index:
            self._block = render_block(self.scene, index, self.rate_hz, self.seed)
            self._block_index = index

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples, int16 counts, shape (n,)."""
        out = np.empty(n, dtype=np.int16)
        done = 0
        while done < n:
            index, offset = divmod(self.position, BLOCK_SAMPLES)
            self._load(index)
            take = min(n - done, BLOCK_SAMPLES - offset)
            out[done:done + take] = self._block[offset:offset + take]
            done += take
            self.position += take
        return out
