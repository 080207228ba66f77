"""Recording, alert clips, replay and uploads on the real stack (mosquitto, redis, Celery workers)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import redis
import soundfile
from fastapi.testclient import TestClient

from dashboard.app import create_app
from soundmon.protocol import topic
from soundmon.provision import AuthFiles, provision_many
from soundmon.recording import Recording, iso
from soundmon.services import (
    MOSQUITTO_CANDIDATES,
    Process,
    find_binary,
    free_port,
    prepare_mosquitto,
    soundmon_argv,
    wait_port,
)
from soundmon.settings import Settings
from soundmon.simulate import simulate
from soundmon.store import SQLiteStore
from soundmon.up import MQTT_ACCOUNTS
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer test-token"}
#: a street scene is above 50 dB(A) throughout: a level_high alert opens within seconds
ENV = {"SOUNDMON_LEVEL_MIN_DB": "40", "SOUNDMON_LEVEL_MAX_DB": "50", "SOUNDMON_CLIP_PREROLL_S": "2",
       "SOUNDMON_CLIP_POSTROLL_S": "2", "SOUNDMON_RECORDING_SEGMENT_S": "3",
       "SOUNDMON_RECORDING_UPKEEP_S": "1", "SOUNDMON_VISIBILITY_TIMEOUT_S": "30"}


@pytest.fixture
def rstack(request: pytest.FixtureRequest, tmp_path: Path, redis_port: int) -> Iterator[Stack]:
    """The pipeline with the recording worker, short clips and fast rotation, on a broker as
    `soundmon up` runs it: accounts and ACL in the data directory, reloaded by SIGHUP, and each
    process with the MQTT account of its job (soundmon.up.MQTT_ACCOUNTS)."""
    binary = find_binary(MOSQUITTO_CANDIDATES)
    assert binary, "mosquitto is not installed: run `make install`"
    data, port = tmp_path / "data", free_port()
    conf = prepare_mosquitto(data, port, auth=True)
    broker = Process("mosquitto", [binary, "-c", str(conf)], dict(os.environ),
                     tmp_path / "logs" / "mosquitto.log").start()
    try:
        wait_port(port, proc=broker.proc)
        (data / "run").mkdir()
        (data / "run" / "mosquitto.pid").write_text(f"{broker.pid}\n")  # for --provision
        s = Stack(tmp_path, port, redis_port, **ENV)
        # the recording queue's worker (soundmon up runs it too); only these tests need it
        s.procs["worker-recording"] = Process("worker-recording",
                                              soundmon_argv("worker", "recording", "-c", "1"),
                                              s.env, tmp_path / "logs" / "worker-recording.log")
        accounts = json.loads(AuthFiles(data).services.read_text())
        for name, account in MQTT_ACCOUNTS.items():
            if name in s.procs:
                s.procs[name].env = {**s.env, "SOUNDMON_MQTT_USERNAME": account,
                                     "SOUNDMON_MQTT_PASSWORD": accounts[account]}
        s.start()
        try:
            yield s
        finally:
            s.stop()
            request.node.add_report_section("teardown", "service logs", s.logs())
    finally:
        broker.stop()


def _accounts(stack: Stack) -> set[str]:
    """The user names in the broker's password file."""
    return {line.split(":", 1)[0]
            for line in AuthFiles(stack.data).passwd.read_text().splitlines()}


@pytest.fixture
def api(rstack: Stack) -> Iterator[TestClient]:
    settings = Settings(data_dir=rstack.data, api_token="test-token",
                        redis_url=f"redis://127.0.0.1:{rstack.redis_port}/0",
                        broker_url=f"redis://127.0.0.1:{rstack.redis_port}/0",
                        level_min_db=40, level_max_db=50, clip_preroll_s=2, clip_postroll_s=2,
                        upload_max_mb=0.5)
    with TestClient(create_app(settings)) as client:
        yield client


def _task_result(api: TestClient, task_id: str, timeout: float = 120) -> dict:
    seen = []

    def done() -> dict | None:
        r = api.get(f"/api/tasks/{task_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        seen.append(body["state"])
        assert body["state"] != "failed", body["error"]
        return body if body["state"] == "done" else None

    body = wait_until(done, timeout, 0.2, f"task {task_id}")
    assert body["progress"] == 1.0 and set(seen) <= {"queued", "running", "done"}
    return body["result"]


def _replay(stack: Stack, *args: str) -> dict:
    """`soundmon replay ... --provision`: the CLI makes the replay device's own account."""
    out = subprocess.run(soundmon_argv("replay", *args, "--provision", "--broker",
                                       f"127.0.0.1:{stack.mqtt_port}"),
                         env=stack.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_record_listen_to_the_alert_and_replay_it_through_the_pipeline(
        rstack: Stack, api: TestClient) -> None:
    """A simulated device is recorded; its alert has a clip; a replay at 20x gives its levels;
    one started from the API goes out with the recording worker's account, svc.replay."""
    creds = provision_many(["rec-00"], rstack.data)
    simulate(1, "127.0.0.1", rstack.mqtt_port, scene="street", frames=20, device_prefix="rec",
             seed=3, credentials=creds)
    store = SQLiteStore(rstack.data / "soundmon.db")
    wait_until(lambda: store.count_levels("rec-00") == 20, 180,
               what="20 levels of rec-00 (the first batch may compile the DSP kernels)")
    original = store.levels("rec-00", 0, 2**62)
    rec = Recording(rstack.data)
    assert len(rec.frame_rows("rec-00", 0, 2**62)) == 20
    start, end = original[0].t_ms, original[-1].t_ms + 500
    assert rec.spans("rec-00", start, end)["gaps"] == []
    assert list((rstack.data / "recordings" / "rec-00").glob("*.flac")), "no rotation into FLAC"

    # the alert and its clip: its beginning cut by the clip task after the post-roll; while the
    # alert is open the page gets the audio up to a post-roll after the last loud level
    (alert,) = wait_until(lambda: store.alerts("rec-00", None, 10), what="an alert")
    early = wait_until(lambda: rec.clip(alert.id), 30, what="the clip task")
    assert (early["start_ms"], early["end_ms"]) == (alert.started_ms - 2000, alert.started_ms + 2000)
    alert = wait_until(lambda: (a := store.alert(alert.id)).last_out_ms == end and a, 30,
                       what="the alert to reach the last frame")
    time.sleep(max(0.0, end + 2500 - time.time() * 1000) / 1000)  # until the post-roll is past
    r = api.get(f"/api/alerts/{alert.id}/clip", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert json.loads(r.headers["x-soundmon-clip"])["final"] is False
    clip, rate = soundfile.read(io.BytesIO(r.content), dtype="int16")
    # 2 s pre-roll + the alert + 2 s post-roll, of which nothing was recorded (the device stopped)
    assert rate == 8000 and clip.size == (end + 2000 - alert.started_ms + 2000) * 8
    assert json.loads(r.headers["x-soundmon-gaps"])[-1] == [iso(end), iso(end + 2000)]
    clip_bytes = len(r.content)
    part = api.get(f"/api/alerts/{alert.id}/clip", headers={**AUTH, "Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == r.content[:100]
    assert api.get("/api/alerts/999999/clip", headers=AUTH).status_code == 404

    # the span as a WAV: exactly the recorded samples
    wav = api.get("/api/recordings/rec-00/audio", params={"start": start, "end": end},
                  headers=AUTH)
    assert wav.status_code == 200 and json.loads(wav.headers["x-soundmon-gaps"]) == []
    recorded = np.concatenate([f.samples for f in rec.frames("rec-00", start, end)])
    np.testing.assert_array_equal(soundfile.read(io.BytesIO(wav.content), dtype="int16")[0],
                                  recorded)

    # replay at 20x through MQTT: the same frame times and levels under another device id
    result = _replay(rstack, "recording:rec-00", "--speed", "20", "--device", "replay-rec",
                     "--start", str(start), "--end", str(end))
    assert result["frames"] == result["acked"] == 20
    assert "replay-rec" in _accounts(rstack)  # --provision made its account
    wait_until(lambda: store.count_levels("replay-rec") == 20, what="20 replayed levels")
    replayed = store.levels("replay-rec", 0, 2**62)
    assert [r.t_ms for r in replayed] == [r.t_ms for r in original]
    for a, b in zip(original, replayed, strict=True):
        assert b.laeq == pytest.approx(a.laeq, abs=0.05), (a.seq, a.laeq, b.laeq)
        assert b.dbfs == pytest.approx(a.dbfs, abs=0.05)

    # the same replay started from the API, run by the recording worker as a task with its own
    # account (svc.replay), as under Docker Compose: no account is made for the replay device
    r = api.post("/api/recordings/rec-00/replay", headers=AUTH,
                 json={"start": str(start), "end": str(end), "speed": 50, "device": "replay-api"})
    assert r.status_code == 202, r.text
    assert _task_result(api, r.json()["task_id"])["acked"] == 20
    wait_until(lambda: store.count_levels("replay-api") == 20, what="20 levels of replay-api")
    assert "replay-api" not in _accounts(rstack)
    # that account may publish as any device: never as a real one
    r = api.post("/api/recordings/rec-00/replay", headers=AUTH,
                 json={"start": str(start), "end": str(end), "device": "rec-00"})
    assert r.status_code == 409 and "rec-00 is a live device" in r.json()["detail"], r.text

    # the same span through changed rules: the live rules raise the alert, 80 dB would not
    results = {}
    for name, rules in (("live", None), ("relaxed", {"level": {"max_db": 80}})):
        r = api.post("/api/recordings/rec-00/analyze", headers=AUTH,
                     json={"start": str(start), "end": str(end), "rules": rules})
        assert r.status_code == 202, r.text
        results[name] = _task_result(api, r.json()["task_id"])
    assert [a["kind"] for a in results["live"]["alerts"]] == ["level_high"]
    assert results["relaxed"]["alerts"] == []
    levels = results["live"]["levels"]
    assert [f["t_ms"] for f in levels] == [r.t_ms for r in original]
    for f, row in zip(levels, original, strict=True):
        assert f["laeq"] == pytest.approx(row.laeq, abs=0.05)
    print("\n--- recorded rec-00, its alert, the clip, a replay, and the span through changed rules")
    print(f"alert {alert.id}: {alert.kind} at {alert.started_ms}, worst {alert.worst:.1f}; clip "
          f"{clip.size / rate:.1f} s at {rate} Hz ({clip_bytes} bytes of WAV)")
    print(f"replay at 20x: {result}")
    for name, res in results.items():
        print(f"analyze {name} rules: {len(res['levels'])} levels, alerts "
              f"{[(a['kind'], a['started'], a['worst']) for a in res['alerts']]}")
    bad = api.post("/api/recordings/rec-00/analyze", headers=AUTH,
                   json={"start": str(start), "end": str(end), "rules": {"level": {"max": 1}}})
    assert bad.status_code == 422 and "level.max" in bad.json()["detail"]

    # the device comes back quiet (for its new rules): the alert resolves, and the clip task
    # cuts the whole clip, pre-roll before it opened to post-roll after it resolved
    store.set_rule_set("rec-00", {"level": {"min_db": 0, "max_db": 120, "resolve_s": 1}})
    simulate(1, "127.0.0.1", rstack.mqtt_port, scene="street", frames=10, device_prefix="rec",
             seed=4, credentials=creds)
    ended = wait_until(lambda: store.alert(alert.id).ended_ms, 60, what="the alert to resolve")
    final = wait_until(lambda: (c := rec.clip(alert.id)) and c["end_ms"] == ended + 2000 and c,
                       60, what="the final clip")
    assert final["start_ms"] == alert.started_ms - 2000
    r = api.get(f"/api/alerts/{alert.id}/clip", headers=AUTH)
    assert json.loads(r.headers["x-soundmon-clip"])["final"] is True
    assert soundfile.info(io.BytesIO(r.content)).frames == (ended - alert.started_ms + 4000) * 8
    print(f"alert {alert.id} resolved at {ended}: final clip "
          f"{(ended - alert.started_ms + 4000) / 1000:.1f} s with gaps {final['gaps']}")

    # deleting the alert deletes its clip; retention alone never does
    assert api.delete(f"/api/alerts/{alert.id}", headers=AUTH).status_code == 204
    assert rec.clip(alert.id) is None and not final["path"].exists()


def _test_wav(path: Path, rate: int = 16000, seconds: int = 8) -> bytes:
    """Noise with a 120 Hz hum and a louder middle: low frequencies test the filter state."""
    rng = np.random.default_rng(5)
    t = np.arange(rate * seconds) / rate
    x = 2000 * rng.standard_normal(t.size) + 4000 * np.sin(2 * np.pi * 120 * t)
    x[rate * 3: rate * 5] *= 4
    soundfile.write(path, np.clip(x, -32768, 32767).astype(np.int16), rate, subtype="PCM_16")
    return path.read_bytes()


def test_a_file_gives_the_same_levels_analysed_uploaded_or_replayed(
        rstack: Stack, api: TestClient, tmp_path: Path) -> None:
    """soundmon analyze, an upload and a replay through MQTT agree per frame within 0.05 dB;
    a truncated, non-audio or oversized upload is refused and leaves nothing behind."""
    data = _test_wav(tmp_path / "hum.wav")
    out = subprocess.run(soundmon_argv("analyze", str(tmp_path / "hum.wav"), "--json"),
                         capture_output=True, text=True, timeout=120, env=rstack.env)
    assert out.returncode == 0, out.stderr
    analysed = [json.loads(line) for line in out.stdout.splitlines()][:-1]
    assert len(analysed) == 8

    r = api.post("/api/uploads", params={"name": "hum"}, content=data,
                 headers={**AUTH, "Content-Type": "audio/wav"})
    assert r.status_code == 202, r.text
    result = _task_result(api, r.json()["task_id"])
    assert [f["t"] for f in result["levels"]] == [f["t"] for f in analysed]
    for up, an in zip(result["levels"], analysed, strict=True):
        assert up["laeq"] == pytest.approx(an["laeq"], abs=0.05)
    assert result["summary"]["laeq"] is not None and isinstance(result["alerts"], list)
    assert not list((rstack.data / "uploads").iterdir())  # analysed, then deleted

    played = _replay(rstack, str(tmp_path / "hum.wav"), "--speed", "20")
    assert played["device"] == "replay-hum" and played["acked"] == 8
    store = SQLiteStore(rstack.data / "soundmon.db")
    wait_until(lambda: store.count_levels("replay-hum") == 8, what="8 replayed levels")
    rows = store.levels("replay-hum", 0, 2**62)
    assert [r.t_ms - rows[0].t_ms for r in rows] == [round(f["t"] * 1000) for f in analysed]
    for row, an in zip(rows, analysed, strict=True):
        assert row.laeq - row.k_db == pytest.approx(an["laeq"], abs=0.05), row.seq

    keys = redis.Redis(port=rstack.redis_port).keys("soundmon:task:*")
    for body, code, words in ((data[: len(data) // 2], 422, "truncated"),
                              (b"<html>not audio</html>" * 10, 415, "not a WAV or FLAC"),
                              (data * 3, 413, "limit")):
        r = api.post("/api/uploads", content=body, headers=AUTH)
        assert r.status_code == code and words in r.json()["detail"], r.text
    assert not list((rstack.data / "uploads").iterdir())
    assert redis.Redis(port=rstack.redis_port).keys("soundmon:task:*") == keys
    assert api.get("/api/tasks/no-such-task", headers=AUTH).status_code == 404


def test_ctrl_c_stops_a_replay_cleanly(mosquitto: int, tmp_path: Path) -> None:
    """SIGINT mid-run: exit 0, a 'stopped' summary, the device goes offline, no traceback."""
    _test_wav(tmp_path / "long.wav", rate=8000, seconds=60)
    frames: list[bytes] = []
    status: list[dict] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ctrl-c-watcher")
    sub.on_message = lambda c, u, m: (frames if m.topic.endswith("/frame") else status).append(
        m.payload if m.topic.endswith("/frame") else json.loads(m.payload))
    sub.connect("127.0.0.1", mosquitto)
    sub.subscribe([(topic("replay-long", "frame"), 1), (topic("replay-long", "status"), 1)])
    sub.loop_start()
    env = {**os.environ, "SOUNDMON_DATA": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(soundmon_argv("replay", str(tmp_path / "long.wav"), "--broker",
                                          f"127.0.0.1:{mosquitto}"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(frames) >= 2, 60, what="the replay's first frames")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sub.loop_stop()
        sub.disconnect()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Aborted" not in err, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped"] is True and summary["total"] == 60
    assert 2 <= summary["frames"] == summary["acked"] < 60
    assert f"replay: stopped after {summary['frames']} of 60 frames" in err
    wait_until(lambda: status and status[-1]["state"] == "offline", 10,
               what="the retained offline status")
