"""Alert rules: ``GET/PUT /api/rules`` (the defaults) and ``GET/PUT/DELETE
/api/devices/{id}/rules`` (a device's override). The model is ``workers.rules``.

A PUT takes the whole rule set or any part of it: what it leaves out keeps its current value
(for a device: the defaults). A bad rule is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException

from dashboard.deps import Authenticated, DeviceId, SettingsDep, StoreDep
from workers import rules

router = APIRouter(prefix="/api", tags=["rules"], dependencies=[Authenticated])


def _check(data: Any) -> rules.RuleSet:
    try:
        return rules.validate(data)
    except rules.RuleError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/rules")
def get_rules(store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """The default rule set every device uses unless it has its own."""
    return rules.load(store, None, settings).model_dump()


@router.put("/rules")
def put_rules(store: StoreDep, settings: SettingsDep,
              patch: Annotated[dict[str, Any], Body(examples=[{"level": {"max_db": 85.0}}])],
              ) -> dict[str, Any]:
    """Change the defaults (whole or in part); the analyze worker applies them to new frames."""
    current = rules.load(store, None, settings)
    merged = _check(rules.merge(current.model_dump(), patch))
    for device, override in _overrides(store):
        try:
            rules.effective(merged, override)
        except rules.RuleError as exc:
            raise HTTPException(422, f"device {device}'s rules would no longer be valid: {exc}"
                                ) from None
    store.set_rule_set("", merged.model_dump())
    return merged.model_dump()


def _overrides(store: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in store.devices():
        o = store.rule_set(d["id"])
        if o:
            out.append((d["id"], o))
    return out


@router.get("/devices/{device}/rules")
def get_device_rules(device: DeviceId, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """``override``: what this device changes; ``effective``: the rules it runs under."""
    override = store.rule_set(device) or {}
    return {"device": device, "override": override,
            "effective": rules.load(store, device, settings).model_dump()}


@router.put("/devices/{device}/rules")
def put_device_rules(device: DeviceId, store: StoreDep, settings: SettingsDep,
                     override: Annotated[dict[str, Any],
                                         Body(examples=[{"level": {"max_db": 70}}])],
                     ) -> dict[str, Any]:
    """Replace the device's override (a partial rule set; ``{}`` removes it)."""
    defaults = rules.load(store, None, settings)
    _check(rules.merge(defaults.model_dump(), override))
    store.set_rule_set(device, override or None)
    return get_device_rules(device, store, settings)


@router.delete("/devices/{device}/rules")
def delete_device_rules(device: DeviceId, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """Remove the device's override: it follows the defaults again."""
    store.set_rule_set(device, None)
    return get_device_rules(device, store, settings)
