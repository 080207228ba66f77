"""Celery task and queue names: the contract between the gateway and the workers.

The gateway sends by name and never imports the workers; a test checks that every name here
is registered on the worker app.
"""

PREPROCESS_QUEUE = "preprocess"
ANALYZE_QUEUE = "analyze"
#: recording upkeep, alert clips, file analyses and replays (docs/recording.md)
RECORDING_QUEUE = "recording"
#: alert notifications: live stream, MQTT, webhooks, e-mail, apprise (docs/notifications.md)
NOTIFY_QUEUE = "notify"

PREPROCESS = "soundmon.preprocess"  # args: [batch id in soundmon.handoff, or the frames:
#                                      a list of [device, recv_ms, payload]]
#: args: [batch id or None, relative level rows (lists in soundmon.store.LEVEL_COLUMNS order,
#: K = 0), and the frames themselves when there is no batch id]: calibrate, store, announce,
#: record the audio, check the rules (on the store's host; docs/deploy.md)
STORE = "soundmon.store"
ANALYZE = "soundmon.analyze"  # args: [levels]; levels: list of level dicts
DEVICE_STATUS = "soundmon.device_status"  # args: [device, status dict, recv_ms]
RECORDING_UPKEEP = "soundmon.recording_upkeep"  # no args: rotate into FLAC, enforce retention
CLIP = "soundmon.clip"  # args: [alert id]; send with countdown = the post-roll
ANALYZE_FILE = "soundmon.analyze_file"  # args: [source dict, options dict]; has a result
REPLAY = "soundmon.replay"  # args: [options dict]; has a result
NOTIFY = "soundmon.notify"  # args: [alert event ids, in order]: route and deliver them
DELIVER = "soundmon.deliver"  # args: [delivery id]: one attempt on one channel, retried
REMIND = "soundmon.remind"  # args: [alert id, n]; sent with countdown = the reminder interval

ROUTES = {
    PREPROCESS: {"queue": PREPROCESS_QUEUE},
    STORE: {"queue": ANALYZE_QUEUE},
    ANALYZE: {"queue": ANALYZE_QUEUE},
    DEVICE_STATUS: {"queue": ANALYZE_QUEUE},
    RECORDING_UPKEEP: {"queue": RECORDING_QUEUE},
    CLIP: {"queue": RECORDING_QUEUE},
    ANALYZE_FILE: {"queue": RECORDING_QUEUE},
    REPLAY: {"queue": RECORDING_QUEUE},
    NOTIFY: {"queue": NOTIFY_QUEUE},
    DELIVER: {"queue": NOTIFY_QUEUE},
    REMIND: {"queue": NOTIFY_QUEUE},
}
