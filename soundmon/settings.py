"""One typed settings object for every soundmon service, read from ``SOUNDMON_*`` variables.

Values are validated when a service starts, so a bad URL or port fails fast with a message
instead of deep inside a worker. ``.env.example`` lists every variable with its default.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """``$SOUNDMON_DATA``, else ``$XDG_DATA_HOME/soundmon``, else ``~/.local/share/soundmon``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "soundmon"


class Settings(BaseSettings):
    """Configuration shared by the gateway, the workers, the API and the CLI."""

    model_config = SettingsConfigDict(env_prefix="SOUNDMON_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        validation_alias=AliasChoices("SOUNDMON_DATA", "SOUNDMON_DATA_DIR"),
    )

    # MQTT broker the devices publish to
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_prefix: str = "soundmon"

    # Celery broker (Redis by default, amqp:// for RabbitMQ) and the Redis used for live events
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Seconds before Redis hands an unacknowledged task to another worker. Tasks take
    # milliseconds, so a minute is ample and bounds the recovery after a worker is killed.
    visibility_timeout_s: int = Field(60, ge=2)

    # Gateway
    gateway_id: str = "gw1"
    share_group: str | None = None
    batch_max_frames: int = Field(512, ge=1, le=10_000)
    batch_max_wait_ms: int = Field(25, ge=0, le=10_000)
    # MQTT v5 receive maximum: unacknowledged frames the broker may have in flight to us.
    # It bounds a batch from above, so it must exceed batch_max_frames comfortably.
    max_inflight: int = Field(1000, ge=1, le=65535)

    # API
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    api_token: str | None = None
    #: Flower's address, for the dashboard's link to worker load (``soundmon up`` sets it)
    flower_url: str | None = None

    # Default bounds (protocol.md section 3), inclusive
    level_min_db: float = 60.0
    level_max_db: float = 80.0
    freq_min_hz: float = 20.0
    freq_max_hz: float = 20000.0
    # An alert opens after this long continuously out of bounds, and resolves after this long
    # continuously back inside (past the hysteresis for levels): a level hovering at a bound
    # neither raises nor clears alerts frame after frame.
    alert_open_s: float = Field(2.0, ge=0)
    alert_resolve_s: float = Field(5.0, ge=0)
    alert_hysteresis_db: float = Field(1.0, ge=0, le=20)

    # Local time zone (IANA name) of the Lden day/evening/night periods (EN/ISO 1996)
    timezone: str = "UTC"

    # Notifications (docs/notifications.md): attempts per channel, spaced base, 2 base, 4 base ...
    notify_max_attempts: int = Field(6, ge=1, le=50)
    notify_retry_base_s: float = Field(5.0, ge=0.01, le=3600)
    notify_timeout_s: float = Field(10.0, gt=0, le=300)  # one webhook/SMTP/apprise attempt

    # Level store (docs/influxdb.md): "sqlite" (one file), or "influxdb": levels in InfluxDB,
    # devices, calibration and alerts still in the SQLite file
    store: Literal["sqlite", "influxdb"] = "sqlite"
    influx_url: str = "http://127.0.0.1:8086"
    influx_token: str | None = None
    influx_org: str = "soundmon"
    influx_bucket: str = "soundmon"  # raw levels; its retention is set on the bucket
    influx_bucket_1m: str = "soundmon_1m"  # 1-minute energetic aggregates for long ranges
    influx_raw_retention_days: float = Field(30.0, gt=0)  # older windows are read from _1m

    # Recording (docs/recording.md): raw audio per device under <data>/recordings
    recording_default: bool = True  # a device without its own switch is recorded
    recording_max_age_h: float = Field(168.0, gt=0)  # segments older than this are deleted
    recording_budget_mb: float = Field(2048.0, gt=0)  # disk budget of segments and clips
    recording_segment_s: float = Field(300.0, ge=1, le=3600)  # audio per FLAC file (rotation)
    recording_upkeep_s: float = Field(30.0, ge=1, le=3600)  # rotation and retention, how often
    clip_preroll_s: float = Field(10.0, ge=0, le=300)  # alert clip: before the alert opened
    clip_postroll_s: float = Field(10.0, ge=0, le=300)  # and after it resolved
    clip_max_s: float = Field(600.0, ge=1, le=3600)  # longest clip; a longer one keeps its start
    upload_max_mb: float = Field(200.0, gt=0, le=4096)  # largest WAV/FLAC upload

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"SOUNDMON_TIMEZONE: unknown time zone {v!r}") from exc
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")):
            raise ValueError("SOUNDMON_BROKER_URL must be a redis:// or amqp:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("SOUNDMON_REDIS_URL must be a redis:// URL")
        return v

    @property
    def db_path(self) -> Path:
        return self.data_dir / "soundmon.db"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
