"""``PATCH /api/devices/{id}``: a device's display name, location and notes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from dashboard.deps import Authenticated, DeviceId, StoreDep
from dashboard.views import present_device
from soundmon.store import now_ms

router = APIRouter(prefix="/api/devices", tags=["devices"], dependencies=[Authenticated])


class DeviceInfoIn(BaseModel):
    """Fields to change; a field left out stays as it is, an empty string or null clears it.

    The id stays: it is the device's MQTT identity. ``name`` is what the page shows.
    """

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=80, examples=["Kitchen"])
    location: str | None = Field(None, max_length=200, examples=["north wall, 2 m high"])
    notes: str | None = Field(None, max_length=2000)


@router.patch("/{device_id}")
def patch_device(device_id: DeviceId, body: DeviceInfoIn, store: StoreDep) -> dict[str, Any]:
    """Set name, location or notes of a known device; returns the device."""
    if store.device(device_id) is None:
        raise HTTPException(404, f"unknown device {device_id!r}")
    fields = body.model_dump(exclude_unset=True)
    store.set_device_info(device_id, {k: (v.strip() or None) if isinstance(v, str) else None
                                      for k, v in fields.items()})
    device = store.device(device_id)
    assert device is not None
    return present_device(device, now_ms())
