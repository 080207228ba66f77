"""Celery task and queue names: the contract between the gateway and the workers.

The gateway sends by name and never imports the workers; a test checks that every name here
is registered on the worker app.
"""

PREPROCESS_QUEUE = "preprocess"
ANALYZE_QUEUE = "analyze"

PREPROCESS = "soundmon.preprocess"  # args: [frames]; frames: list of [device, recv_ms, payload]
ANALYZE = "soundmon.analyze"  # args: [levels]; levels: list of level dicts
DEVICE_STATUS = "soundmon.device_status"  # args: [device, status dict, recv_ms]

ROUTES = {
    PREPROCESS: {"queue": PREPROCESS_QUEUE},
    ANALYZE: {"queue": ANALYZE_QUEUE},
    DEVICE_STATUS: {"queue": ANALYZE_QUEUE},
}
