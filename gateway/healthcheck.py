"""Exit 0 if this gateway's heartbeat in Redis is fresh and it is subscribed (for compose)."""

from __future__ import annotations

import json
import sys

import redis

from soundmon.events import GATEWAY_HEARTBEAT_PREFIX
from soundmon.settings import get_settings


def main() -> int:
    s = get_settings()
    try:
        raw = redis.Redis.from_url(s.redis_url, socket_timeout=2).get(
            GATEWAY_HEARTBEAT_PREFIX + s.gateway_id)
    except redis.RedisError as exc:
        print(f"redis unreachable: {exc}")
        return 1
    if not raw:
        print("no heartbeat from this gateway")
        return 1
    if not json.loads(raw).get("connected"):
        print("gateway is not subscribed to the MQTT broker")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
