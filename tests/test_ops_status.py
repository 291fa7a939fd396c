"""`minutecast status`'s screen and health verdict (pure logic on collect()'s dict): a stalled or stopped Faust
worker is shown and makes the status unhealthy."""

from __future__ import annotations

from ops.status import healthy, render

BASE = {"namespace": "ns", "services": {"kafka": {"up": True}, "redis": {"up": True}}, "model_version": "x"}


def test_a_stalled_worker_is_shown_and_unhealthy() -> None:
    assert healthy(BASE) and "STALLED" not in render(BASE)
    stalled = BASE | {"stream_stalled_s": 12.5, "stream_stall_reason": "redis unavailable: connection refused"}
    assert "STALLED" in render(stalled) and "redis unavailable" in render(stalled) and not healthy(stalled)
    fatal = BASE | {"stream_fatal": "Redis OOM"}
    assert "FATAL" in render(fatal) and not healthy(fatal)
