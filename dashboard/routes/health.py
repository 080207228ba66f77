"""``GET /api/health``: which dependencies work, without authentication (compose polls it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dashboard.deps import HealthDep

router = APIRouter(prefix="/api", tags=["health"])


@router.get(
    "/health",
    responses={503: {"description": "at least one dependency is failing (same body)"}},
)
async def health(checks: HealthDep) -> JSONResponse:
    """``{"ok": [names], "failing": {name: reason}}``; 200 when nothing fails, else 503."""
    ok, failing = await checks.run()
    return JSONResponse({"ok": ok, "failing": failing}, status_code=503 if failing else 200)
