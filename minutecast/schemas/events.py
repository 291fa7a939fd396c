"""Window-ready events (Faust -> Spark) and dead letters (any stage), with their decoders."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from minutecast import decoding
from minutecast.decoding import is_ticker, iso_minute
from minutecast.errors import Rejected
from minutecast.schemas.common import (
    DEADLETTER_VERSION,
    DL_KEY_CHARS,
    DL_PAYLOAD_BYTES,
    MAX_EVENT_BYTES,
    READY_VERSION,
    REASONS,
)

_READY_FIELDS = ("ticker", "minute", "checksum", "ready_at")


@dataclass(frozen=True, slots=True)
class WindowReady:
    """The Faust app's announcement that ``ticker``'s window ending at ``minute`` is complete in Redis."""

    ticker: str
    minute: int  # epoch seconds of the window's last bar (as-of minute t)
    checksum: str  # hex digest of the window's contents: a version of the window
    published_at: float | None  # producer publish time of the bar at t (epoch s)
    ready_at: float  # when the Redis write was durable (epoch s)

    def to_json(self) -> bytes:
        d = {"v": READY_VERSION, **asdict(self), "time": iso_minute(self.minute)}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> WindowReady:
        """Decode one event; raises only :class:`Rejected` (extra fields such as ``time`` are ignored)."""
        d = decoding.obj(decoding.loads(raw, MAX_EVENT_BYTES))
        decoding.header(d, "window-ready", {READY_VERSION: _READY_FIELDS})
        if not is_ticker(d["ticker"]):
            raise Rejected("bad_ticker", f"{str(d['ticker'])[:20]!r} is not a ticker")
        decoding.text(d["checksum"], "checksum", 64, "wrong_type")
        pub = d.get("published_at")
        return cls(d["ticker"], decoding.plausible_minute(d["minute"], "minute"), d["checksum"],
                   None if pub is None else decoding.stamp(pub, "published_at"),
                   decoding.stamp(d["ready_at"], "ready_at"))


_DEADLETTER_FIELDS = ("reason", "detail", "stage", "payload", "truncated", "at")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message and why, bounded in size whatever was rejected: ``payload`` is cut to
    :data:`DL_PAYLOAD_BYTES` and ``key`` to :data:`DL_KEY_CHARS` (``truncated`` says either was cut), so
    a dead letter always fits the producer's request limit (< ~16 kB as JSON)."""

    reason: str  # one of REASONS
    detail: str
    stage: str  # "producer", "stream", "infer"
    source_topic: str | None
    partition: int | None
    offset: int | None
    key: str | None
    payload: str
    truncated: bool
    at: float

    @classmethod
    def of(
        cls,
        err: Rejected,
        payload: bytes | str | None,
        stage: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | str | None = None,
    ) -> DeadLetter:
        raw = payload if isinstance(payload, bytes) else (payload or "").encode(errors="replace")
        text = raw[:DL_PAYLOAD_BYTES].decode(errors="replace")
        cut = len(raw) > DL_PAYLOAD_BYTES
        k = None
        if key is not None:
            kb = key if isinstance(key, bytes) else key.encode(errors="replace")
            k = kb[:DL_KEY_CHARS].decode(errors="replace")
            cut = cut or len(kb) > DL_KEY_CHARS
        return cls(err.reason, err.detail[:200], stage, topic, partition, offset, k, text, cut, time.time())

    @property
    def kafka_key(self) -> bytes | None:
        """The key to publish this dead letter under: the rejected record's ticker key, else none."""
        return self.key.encode() if self.key is not None and is_ticker(self.key) else None

    def to_json(self) -> bytes:
        return json.dumps({"v": DEADLETTER_VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> DeadLetter:
        """Decode a dead letter (operators' tools, tests); raises only :class:`Rejected`."""
        d = decoding.obj(decoding.loads(raw, MAX_EVENT_BYTES))
        decoding.header(d, "dead letter", {DEADLETTER_VERSION: _DEADLETTER_FIELDS})
        if d["reason"] not in REASONS:
            raise Rejected("wrong_type", f"unknown reason {str(d['reason'])[:40]!r}")
        strs = [n for n in ("detail", "stage", "payload") if not isinstance(d[n], str)]
        strs += [n for n in ("source_topic", "key") if d.get(n) is not None and not isinstance(d[n], str)]
        if strs or not isinstance(d["truncated"], bool):
            raise Rejected("wrong_type", ",".join(strs) or "truncated")
        pos = {n: None if d.get(n) is None else decoding.integer(d[n], n) for n in ("partition", "offset")}
        return cls(d["reason"], d["detail"][:200], d["stage"][:16], d.get("source_topic"), pos["partition"],
                   pos["offset"], d.get("key"), d["payload"][:DL_PAYLOAD_BYTES], d["truncated"],
                   decoding.stamp(d["at"], "at"))
