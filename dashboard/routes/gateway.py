"""``GET /api/gateway``: the gateways' counters, as they keep them in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException
from redis.exceptions import RedisError

from dashboard.deps import Authenticated, RedisDep
from dashboard.health import short
from dashboard.views import gateway_stats
from soundmon.events import GATEWAY_STATS_KEY

router = APIRouter(prefix="/api", tags=["gateway"], dependencies=[Authenticated])


@router.get("/gateway", responses={503: {"description": "redis is unavailable"}})
async def get_gateway(redis: RedisDep) -> dict[str, Any]:
    """``{"gateways": {gw_id: {counter: n}}, "totals": {counter: n}}``."""
    if redis is None:
        raise HTTPException(503, "redis is not configured")
    try:
        fields = await asyncio.wait_for(redis.hgetall(GATEWAY_STATS_KEY), 2.0)
    except TimeoutError:
        raise HTTPException(503, "redis did not answer within 2 s") from None
    except (RedisError, OSError) as exc:
        raise HTTPException(503, f"redis unavailable: {short(exc)}") from exc
    return gateway_stats(fields)
