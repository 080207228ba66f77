"""The dashboard in a real browser: Debian's Chromium (headless, via Playwright) against a real
`soundmon up --simulate 6` on free ports with its own data directory.

Covers: sign-in, the live chart gaining points, an alert toast during the loud scene with its
browser notification (the Notification API spied on, the permission granted by the context)
and its acknowledgement, resolving an alert by hand on the alerts page, zooming the history,
exporting CSV, the alerts page and its delivery log, renaming a device, a recorded span played
and analysed with changed rules, a WAV analysis followed to its task result, and a phone-sized
overview.
Screenshots of every page go to ``test-artifacts/screenshots/`` (checked to be non-empty PNGs).
The tests run in file order on one signed-in tab.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from soundmon.recording import iso
from soundmon.services import free_port
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
#: `soundmon up --simulate 6` cycles the scenes: sim-02 is a street, sim-05 the loud scene
#: (a 60 dB(A) background with 85-95 dB(A) events every 10 s), so alerts open and resolve.
STREET, LOUD = "sim-02", "sim-05"
N_DEVICES = 6


def chromium_path() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


class Stack:
    """`soundmon up` as a user runs it; stopped with Ctrl-C."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.http, mqtt, redis, flower = (free_port() for _ in range(4))
        self.base = f"http://127.0.0.1:{self.http}"
        self.out_path = tmp / "up.out"
        self.out = open(self.out_path, "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "SOUNDMON_API_TOKEN"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "soundmon", "up", "--simulate", str(N_DEVICES),
             "--data", str(self.data), "--http-port", str(self.http), "--mqtt-port", str(mqtt),
             "--redis-port", str(redis), "--flower-port", str(flower)],
            stdout=self.out, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def admin_password(self) -> str:
        match = re.search(r"Sign in:\s+user admin, password (\S+)", self.output())
        assert match, self.output()
        return match.group(1)

    def api(self) -> httpx.Client:
        token = (self.data / "api-token").read_text().strip()
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"},
                            timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("browser"))
    try:
        wait_until(lambda: "Press Ctrl-C" in s.output() or s.proc.poll() is not None,
                   timeout=120, what="soundmon up to start")
        assert s.proc.poll() is None, s.output()
        yield s
    finally:
        s.stop()
        print(s.output())
        for log in sorted((s.data / "logs").glob("dashboard*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    exe = chromium_path()
    if exe is None:
        pytest.fail("Debian's chromium is not installed: run `make install`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        try:
            yield b
        finally:
            b.close()


#: Records every ``new Notification(...)`` in ``window.__notes`` and asks the real API for the
#: permission (granted by the context), remembering the answer across reloads.
NOTIFICATION_SPY = """
(() => {
  const Real = window.Notification;
  window.__notes = [];
  window.__noteObjects = [];
  window.__permissionAsked = 0;
  class SpyNotification {
    constructor(title, options = {}) {
      window.__notes.push({ title, body: options.body || "", tag: options.tag || "" });
      window.__noteObjects.push(this);
      this.onclick = null;
    }
    close() {}
    static get permission() { return localStorage.getItem("spy-permission") || "default"; }
    static async requestPermission() {
      window.__permissionAsked += 1;
      const answer = Real ? await Real.requestPermission() : "granted";
      localStorage.setItem("spy-permission", answer);
      return answer;
    }
  }
  window.Notification = SpyNotification;
})();
"""


@pytest.fixture(scope="module")
def page(browser, stack: Stack) -> Iterator[object]:
    """One signed-in tab for the tests below (signing in is itself the first test)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True,
                                  permissions=["notifications"])
    context.add_init_script(NOTIFICATION_SPY)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.errors = errors
    try:
        yield tab
    finally:
        context.close()


def shot(tab, name: str) -> Path:
    """Save a full-page screenshot and check it is a non-empty PNG."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
    return path


def test_sign_in_shows_every_device(page, stack: Stack) -> None:
    """No data before signing in; a wrong password is refused; admin's password opens the overview."""
    assert httpx.get(f"{stack.base}/api/devices", timeout=10).status_code == 401
    page.goto(stack.base + "/")
    assert page.locator("form[action='/login']").is_visible()
    shot(page, "signin")
    page.fill("#user", "admin")
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.locator(".error").inner_text()
    page.fill("#password", stack.admin_password())
    page.click("button[type=submit]")
    page.wait_for_selector("#conn.live", timeout=30_000)
    for i in range(N_DEVICES):  # generous: the workers' first batches compile their DSP kernels
        page.wait_for_selector(f".card[data-id='sim-{i:02d}'] .level.ok, "
                               f".card[data-id='sim-{i:02d}'] .level.low, "
                               f".card[data-id='sim-{i:02d}'] .level.high", timeout=150_000)
    assert page.locator(f".card[data-id='{STREET}'] .state").inner_text() == "online"
    assert re.fullmatch(r"\d+\.\d", page.locator(f".card[data-id='{STREET}'] .level").inner_text()
                        .split("\n")[0].replace("dB(A)", "").strip())
    page.wait_for_timeout(2000)  # a few live updates into the sparklines
    shot(page, "overview")
    assert page.errors == []


def test_live_chart_gains_points(page, stack: Stack) -> None:
    """The device page's live chart grows as frames arrive over the stream; the spectrum shows."""
    page.goto(f"{stack.base}/#/device/{STREET}")
    count = page.locator("#live-count")
    count.wait_for(timeout=20_000)
    wait_until(lambda: (count.get_attribute("data-points") or "0") != "0", timeout=30,
               what="the live chart's first points")
    first = int(count.get_attribute("data-points"))
    wait_until(lambda: int(count.get_attribute("data-points")) >= first + 4, timeout=30,
               what="the live chart to gain points")
    assert page.locator("#live-chart canvas").count() >= 1
    assert page.locator("#spectrum-chart canvas").count() >= 1
    assert "Nyquist" in page.locator("#limits").inner_text()
    shot(page, "device")
    assert page.errors == []


def test_alert_toast_during_loud_scene_is_acknowledged(page, stack: Stack) -> None:
    """With notifications turned on, a loud event opens an alert: a toast and a browser
    notification appear, and the toast's Acknowledge button acknowledges it."""
    page.goto(f"{stack.base}/#/device/{LOUD}")
    toggle = page.locator("#notify-toggle")
    assert toggle.inner_text() == "Notifications off"
    toggle.click()  # a click: browsers only ask for the permission on one
    wait_until(lambda: toggle.get_attribute("aria-pressed") == "true", timeout=10,
               what="notifications to turn on")
    assert page.evaluate("window.__permissionAsked") == 1
    assert page.evaluate("localStorage.getItem('soundmon.notifications')") == "on"
    toast = page.locator(f".toast.alert:has(button.ack):has-text('{LOUD}')").first
    acked = None
    for _ in range(4):  # an alert may resolve before the click lands: take the next one
        toast.wait_for(timeout=90_000)
        alert_id = toast.get_attribute("data-alert")
        shot(page, "alert-toast")
        toast.locator("button.ack").click()
        state = toast.locator(".state-tag")
        wait_until(lambda s=state: s.inner_text() != "open", timeout=15, what="the ack's answer")
        if state.inner_text() == "acknowledged":
            acked = alert_id
            break
        toast.locator("button.x").click()
    assert acked is not None, "no alert could be acknowledged while open"
    with stack.api() as api:
        alert = api.get(f"/api/alerts/{acked}").json()
    assert alert["device"] == LOUD and alert["acknowledged_by"] == "admin"
    assert alert["state"] in ("acknowledged", "resolved")
    # an alert that opened after notifications were turned on was also a browser notification
    notes = wait_until(lambda: [n for n in page.evaluate("window.__notes") if LOUD in n["title"]],
                       timeout=90, what="a browser notification for the loud device")
    assert "level" in notes[0]["title"] and "dB(A)" in notes[0]["body"]
    assert "worst" in notes[0]["body"] and notes[0]["tag"].startswith("soundmon-alert-")
    page.evaluate("window.__noteObjects[window.__noteObjects.length - 1].onclick()")
    wait_until(lambda: page.evaluate("location.hash").startswith("#/alerts?device="), timeout=10,
               what="a click on the notification to open the alerts page")
    assert page.errors == []


def test_alert_resolved_by_hand_on_the_alerts_page(page, stack: Stack) -> None:
    """The alerts page's Resolve button resolves an open alert as the signed-in user; the
    channels get exactly one resolved message for it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def resolved_alert(alert_id: str) -> dict | None:
        with stack.api() as api:
            alert = api.get(f"/api/alerts/{alert_id}").json()
        return alert if alert["state"] == "resolved" else None

    page.goto(f"{stack.base}/#/alerts?device={LOUD}")
    resolved = None
    for _ in range(4):  # an alert may resolve by itself before the click lands: take the next
        first = page.locator("#alert-rows tr[data-alert]:has(button:text-is('Resolve'))").first
        first.wait_for(timeout=90_000)
        alert_id = first.get_attribute("data-alert")
        try:  # the list re-renders on every alert event: click this alert's own button
            page.locator(f"#alert-rows tr[data-alert='{alert_id}'] button:text-is('Resolve')"
                         ).click(timeout=5_000)
        except PlaywrightTimeout:
            continue  # resolved by itself meanwhile
        alert = wait_until(lambda i=alert_id: resolved_alert(i), timeout=15, what="the resolve")
        if alert["resolved_by"] == "admin":
            resolved = alert
            break
    assert resolved is not None, "no alert could be resolved by hand while open"
    page.wait_for_selector(f"#alert-rows tr[data-alert='{resolved['id']}'] "
                           ".badge:text-is('resolved')", timeout=10_000)

    def resolve_log() -> list[dict] | None:
        with stack.api() as api:
            log = api.get(f"/api/alerts/{resolved['id']}").json()["deliveries"]
        done = {d["channel"] for d in log if d["event"] == "resolved" and d["state"] == "sent"}
        return log if done >= {"live", "mqtt"} else None

    log = wait_until(resolve_log, timeout=60, what="the resolved message on every channel")
    channels = [d["channel"] for d in log if d["event"] == "resolved"]
    assert sorted(channels) == sorted(set(channels))  # one resolved message per channel
    assert page.errors == []


def test_history_zooms_to_a_finer_resolution(page, stack: Stack) -> None:
    """Dragging across the history chart reloads that span from the store in finer buckets."""
    page.goto(f"{stack.base}/#/device/{LOUD}")
    note = page.locator("#history-note")
    wait_until(lambda: note.get_attribute("data-bucket-ms"), timeout=30, what="the history")
    coarse = int(note.get_attribute("data-bucket-ms"))
    over = page.locator("#history-chart .u-over")
    # the mouse works in viewport coordinates: the chart at the top, toasts (bottom right) away
    over.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.evaluate("document.querySelectorAll('.toast').forEach((t) => t.remove())")
    box = over.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.90, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.99, y, steps=8)
    page.mouse.up()
    wait_until(lambda: int(note.get_attribute("data-bucket-ms") or coarse) < coarse, timeout=20,
               what="the zoomed history")
    fine = int(note.get_attribute("data-bucket-ms"))
    assert fine * 5 < coarse
    assert page.locator("#zoom-reset").is_visible()
    shot(page, "history-zoomed")
    assert page.errors == []


def test_export_csv_of_the_range(page, stack: Stack) -> None:
    """The export link downloads the shown range's levels as CSV, one row per stored level."""
    page.goto(f"{stack.base}/#/device/{LOUD}")
    page.click("button[data-range='1h']")  # back from the zoom of the test before
    page.wait_for_selector("button[data-range='1h'].on", timeout=10_000)
    link = page.locator("[data-export='levels-csv']")
    link.wait_for(timeout=30_000)
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename.startswith(f"soundmon-levels-{LOUD}-")
    text = Path(download.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows, text[:300]
    assert {r["device"] for r in rows} == {LOUD}
    assert all(40 < float(r["laeq"]) < 110 for r in rows if r["laeq"])
    t = [int(r["t_ms"]) for r in rows]
    assert t == sorted(t)


def test_alerts_and_settings_pages(page, stack: Stack) -> None:
    """The alerts page lists the loud device's alerts; settings rename a device, shown everywhere."""
    page.goto(f"{stack.base}/#/alerts?device={LOUD}")
    page.wait_for_selector("#alert-rows tr[data-alert]", timeout=30_000)
    rows = page.locator("#alert-rows tr[data-alert]")
    assert rows.count() >= 1
    assert {rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())} == {LOUD}
    rows.first.locator("button:has-text('details')").click()
    page.wait_for_selector("#alert-rows .detail-row h3:has-text('Delivery log')", timeout=10_000)
    shot(page, "alerts")
    page.goto(f"{stack.base}/#/settings/{STREET}")
    page.wait_for_selector("#device-form", timeout=20_000)
    # the simulator's devices were never deployed with `soundmon deploy`: the page says so
    assert "Nothing recorded" in page.locator("#deployed-config").inner_text()
    page.fill("#device-form input[name=name]", "Street corner")
    page.fill("#device-form input[name=location]", "lamp post 4")
    page.click("#device-form button[type=submit]")
    page.wait_for_selector("#device-form .note:has-text('Saved')", timeout=10_000)
    shot(page, "settings")
    page.goto(f"{stack.base}/#/")
    page.wait_for_selector(f".card[data-id='{STREET}'] .card-id:has-text('Street corner')",
                           timeout=10_000)
    assert page.errors == []


def test_device_recordings_play_a_span_and_analyse_it_with_changed_rules(page, stack: Stack) -> None:
    """The device page lists recorded spans; play gives the player a WAV the server serves; the
    last 30 s analysed with a 30 dB(A) upper bound list the level_high alert it would raise."""
    page.goto(f"{stack.base}/#/device/{STREET}")
    row = page.locator("#span-rows tr.span").first
    row.wait_for(timeout=30_000)
    assert "recorded spans" in page.locator("#spans-note").inner_text()
    row.locator("button.play").click()
    audio = page.locator("#span-audio")
    src = wait_until(lambda: audio.get_attribute("src"), timeout=10, what="the player's source")
    assert src.startswith(f"/api/recordings/{STREET}/audio?")
    reply = page.request.get(stack.base + src)  # with the page's session cookie
    assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"
    assert reply.body()[:4] == b"RIFF" and len(reply.body()) > 8000
    end_ms = int(row.get_attribute("data-end"))
    start_ms = max(int(row.get_attribute("data-start")), end_ms - 30_000)
    page.fill("#recordings input[name=start]", iso(start_ms))
    page.fill("#recordings input[name=end]", iso(end_ms))
    page.fill("#span-analysis input[name=min_db]", "0")
    page.fill("#span-analysis input[name=max_db]", "30")
    page.click("#span-analysis button[type=submit]")
    status = page.locator("#analysis-status")
    wait_until(lambda: re.search(r": done|failed|Not analysed", status.inner_text()), timeout=120,
               what="the span analysis to finish")
    assert ": done" in status.inner_text(), status.inner_text()
    assert page.locator("#analysis-alerts li[data-kind='level_high']").count() >= 1
    assert page.locator("#analysis-result .stats dt:has-text('LAeq')").count() == 1
    shot(page, "device-recordings")
    assert page.errors == []


def test_wav_analysis_is_followed_to_its_result(page, stack: Stack, tmp_path: Path) -> None:
    """A WAV uploaded on the settings page starts a task; the page follows /api/tasks/{id} to 'done'."""
    rate, seconds, level_dbfs = 8000, 3, -20.0
    t = np.arange(rate * seconds) / rate
    amplitude = 32767 * 10 ** (level_dbfs / 20) * math.sqrt(2)
    samples = (amplitude * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    page.goto(f"{stack.base}/#/settings")
    form_input = page.locator("input[type=file][name=file]")
    form_input.wait_for(timeout=20_000)
    form_input.set_input_files(str(wav))
    page.click("form:has(input[type=file]) button[type=submit]")
    status = page.locator("#task-status")
    wait_until(lambda: re.search(r": (done|failed)", status.inner_text()), timeout=120,
               what="the analysis task to finish")
    assert ": done" in status.inner_text(), status.inner_text()
    summary = json.loads(page.locator("#task-result").inner_text())
    assert summary["dbfs"] == pytest.approx(level_dbfs, abs=0.2)  # the workers measured our tone
    assert summary["dominant_hz"] == pytest.approx(1000, abs=20)
    assert page.locator("#task-alerts h3").inner_text() == "Alerts these rules would have raised"
    shot(page, "task-done")
    assert page.errors == []


def test_overview_fits_a_phone(browser, page, stack: Stack) -> None:
    """On a 390 px wide phone the overview needs no sideways scrolling."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  storage_state=page.context.storage_state())
    try:
        phone = context.new_page()
        phone.goto(stack.base + "/")
        phone.wait_for_selector(f".card[data-id='{LOUD}']", timeout=30_000)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        # cards off screen are patched when they scroll into view: scroll down as a user would
        scrolled_ms = time.time() * 1000
        for _ in range(12):
            phone.mouse.wheel(0, 600)
            phone.wait_for_timeout(150)
        last = phone.locator(f".card[data-id='{LOUD}']")
        wait_until(lambda: int(last.get_attribute("data-level-t") or 0) > scrolled_ms,
                   timeout=15, what="the last card to show a current level once on screen")
        phone.evaluate("window.scrollTo(0, 0)")
        phone.wait_for_timeout(500)
        shot(phone, "overview-phone")
    finally:
        context.close()
