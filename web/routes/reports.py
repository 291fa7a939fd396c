"""``GET /reports/{path}``: the trainer's reports and plots, from ``MINUTECAST_REPORTS`` (never outside it)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from web.deps import StateDep

router = APIRouter(tags=["reports"])


@router.get("/reports/{path:path}", summary="the trainer's reports and plots (report.md, report.json, *.png)")
async def reports(st: StateDep, path: str) -> FileResponse:
    root = st.s.reports.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, f"no report file {path!r}")
    media = "text/plain; charset=utf-8" if target.suffix in (".md", ".txt") else None
    return FileResponse(target, media_type=media)
