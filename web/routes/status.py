"""``GET /api/status``: what `minutecast status` shows, plus the replay state, report links and this server's
stream clients. The pipeline's part is computed at most every ``serve_status_cache_s`` (it samples for bars/s)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from infra.runstate import local
from minutecast import status as core
from minutecast.redis import text
from minutecast.settings import InfraSettings, WebSettings
from web import models
from web.deps import State, StateDep

router = APIRouter(prefix="/api", tags=["forecasts"])


@router.get("/status", responses={200: {"model": models.Status}}, summary="what `minutecast status` shows")
async def status(st: StateDep) -> JSONResponse:
    return JSONResponse(await pipeline_status(st))


async def pipeline_status(st: State) -> dict[str, Any]:
    async with st.status_lock:
        if st.status is None or time.monotonic() - st.status[0] > st.s.serve_status_cache_s:
            st.status = (time.monotonic(), await asyncio.to_thread(collect_status, st.s))
    out = dict(st.status[1])
    replay = await st.redis.hgetall(st.keys.replay_state())
    out["replay"] = {text(k): text(v) for k, v in replay.items()}
    out["web"] = {"sse_clients": len(st.broadcaster.subscribers), "stream_ready": st.broadcaster.ready.is_set(),
                  "tickers": len(st.tickers)}
    return out


def collect_status(s: WebSettings) -> dict[str, Any]:
    """`minutecast status`'s dict plus the links to the served model's report and to the latest report."""

    infra = InfraSettings(namespace=s.namespace, home=s.home, kafka=s.kafka, redis=s.redis)
    out = core.collect(infra, local(infra), sample_s=0.5)
    out["report"] = report_links(s.reports, str(out.get("model_version", "")))
    out["latest_report"] = report_links(s.reports, "")  # the newest evaluation, promoted or not
    return out


def report_links(root: Path, version: str) -> dict[str, Any] | None:
    """Links to the report of ``version`` (else the latest report): Markdown, JSON and plots."""
    for name in (version, "latest"):
        folder = root / name
        if name and (folder / "report.md").is_file():
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            return {"version": folder.resolve().name, "report": f"/reports/{name}/report.md",
                    "files": [f"/reports/{name}/{f}" for f in files]}
    return None
