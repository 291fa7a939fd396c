"""Property-based tests (hypothesis) of every decoder: any input gives a value or the project's rejection
error with a reason code of :data:`minutecast.schemas.REASONS`, never another exception.

Decoders: bar records (:func:`parse_bar_record`, what the worker, rebuild and training use), window-ready
events, forecasts (dict and JSON), dead letters, and the registry's ``meta.json`` / archive checks (whose
rejection is :class:`ModelError`). Each runs :data:`N` examples (issue 17: at least 10,000 in CI) from a mix
of raw bytes, mutated valid messages and hostile values (400-digit numbers, ``1e999``, 2,000-deep nesting,
NUL / bidi-override characters, ``"AAPL\\n"``). Pure logic: no services.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import zipfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minutecast.errors import ModelError, Rejected
from minutecast.features import FEATURE_SPEC, Scaler
from minutecast.modelcheck import ALLOWED_CLASSES, _classes, check_archive, parse_meta
from minutecast.schemas import REASONS, Bar, DeadLetter, Forecast, WindowReady, parse_bar_record

N = 10_000
FUZZ = settings(max_examples=N, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NOW = 1_764_000_000.0  # 2025-11-24
BAR = Bar("AAPL", 1_759_325_400, 253.38, 253.5, 252.16, 252.52, 3395.0, "replay", 1_759_325_461.5)
READY = WindowReady("AAPL", 1_759_325_400, "0123456789abcdef", 1_759_325_461.5, 1_759_325_462.0)
V2 = Forecast("AAPL", 1_759_325_400, 5, 252.6, 252.52, "20261201T100000Z-0a1b2c3d", "lstm", None, 2.0, 3.0,
              q05=251.9, q10=252.1, q50=252.6, q90=253.05, q95=253.2, sigma=0.0013, interval_kind="lstm",
              log_s80=0.05, log_s90=-0.02)
V1 = Forecast("AAPL", 1_759_325_400, 5, 253.0, 252.52, "persistence", "persistence", 1.0, 2.0, 3.0)
DL = DeadLetter.of(Rejected("not_json", "x"), b"{oops", "stream", topic="t", partition=1, offset=7, key=b"AAPL")

HOSTILE_STRINGS = ["AAPL\n", "AAPL\x00", "A\u202eLPA", "\u200b", "", " ", "\ud800", "NaN", "1e999", "None",
                   "2025-10-01T13:30:00Z", "2025-10-01T13:30:00", "9999-12-31T23:59:00-23:59", "lstm", "AAPL", "1"]
HOSTILE_NUMBERS = [10**400, -10**400, 2**53 + 1, 1e300, -1e300, 5e-324, 0, -1, 1, 1e999, -1e999, math.nan,
                   946_684_800, 4_102_444_800, 1_759_325_400, 1_759_325_461.5, True, False]
# Cheap strategies on purpose (hypothesis' own cost dominates: ~0.3 ms an example on a quiet machine).
scalars = st.one_of(
    st.none(), st.integers(), st.floats(), st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
    st.sampled_from(HOSTILE_STRINGS), st.sampled_from(HOSTILE_NUMBERS))
values = st.one_of(scalars, st.lists(scalars, max_size=2))
deep = st.integers(min_value=1, max_value=3000).map(
    lambda n: "[" * n + "]" * n if n % 2 else '{"a":' * n + "1" + "}" * n)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """``base`` with one or two fields replaced by hostile values, one deleted or one added, as JSON; or
    byte-level damage of its JSON."""
    fields = sorted(base)
    cases = st.tuples(st.sampled_from([*fields, "extra"]), values, st.sampled_from([*fields, "extra"]), values,
                      st.sampled_from([None, *fields]))

    def build(c: tuple[str, Any, str, Any, str | None]) -> bytes:
        d = base | {c[0]: c[1], c[2]: c[3]}
        d.pop(c[4], None)  # type: ignore[arg-type]
        return json.dumps(d, allow_nan=True).encode()

    good = json.dumps(base).encode()
    damaged = st.tuples(st.integers(0, len(good)), st.integers(0, 8), st.binary(max_size=8)).map(
        lambda t: good[:t[0]] + t[2] + good[t[0] + t[1]:])
    return st.one_of(cases.map(build), cases.map(build), damaged)


def rejected_properly(exc: Rejected) -> None:
    assert exc.reason in REASONS, exc.reason


keys = st.one_of(st.none(), st.just(b"AAPL"), st.just(b"AAPL\n"), st.binary(max_size=24), st.just(b"A" * 600_000))
messages = st.one_of(
    mutated(BAR.to_dict()), mutated(json.loads(READY.to_json())), mutated(json.loads(V2.to_json())),
    mutated(json.loads(V1.to_json())), mutated(json.loads(DL.to_json())), st.none(), st.binary(max_size=200),
    deep.map(str.encode))


def _value_or_reason(decode: Any, *args: Any) -> Any:
    try:
        return decode(*args)
    except Rejected as exc:
        rejected_properly(exc)
        return None


@FUZZ
@given(key=keys, value=messages)
def test_every_message_decoder_gives_a_value_or_a_reason(key: bytes | None, value: bytes | None) -> None:
    """Each example goes through all five message decoders (so each decoder sees N examples: its own
    messages mutated, the others' messages, raw bytes, deep nesting)."""
    bar = _value_or_reason(parse_bar_record, key, value, NOW)
    if bar is not None:  # a bar every consumer can use: re-encodable, finite, its key its ticker
        assert key == bar.ticker.encode() and parse_bar_record(key, bar.to_json(), NOW) == bar
        assert bar.published_at is None or math.isfinite(bar.published_at)
    ev = _value_or_reason(WindowReady.from_json, value)
    if ev is not None:
        assert WindowReady.from_json(ev.to_json()) == ev and math.isfinite(ev.ready_at)
    f = _value_or_reason(Forecast.from_json, value)
    if f is not None:
        assert Forecast.from_json(f.to_json()) == f and math.isfinite(f.predicted_close)
    try:
        obj = json.loads(value or b"")
    except (ValueError, RecursionError):
        obj = value  # not JSON: from_dict gets the raw value itself
    f = _value_or_reason(Forecast.from_dict, obj)
    if f is not None:
        assert Forecast.from_dict(json.loads(f.to_json())) == f
    dl = _value_or_reason(DeadLetter.from_json, value)
    if dl is not None:
        assert dl.reason in REASONS and len(dl.to_json()) < 20_000


@functools.cache
def _meta() -> dict[str, Any]:
    scaler = Scaler(ret_scale=1e-3, gap_scale=5e-3, range_scale=2e-3, logvol_mean=7.0, logvol_std=1.0,
                    mkt_ret_scale=1e-3, mkt_range_scale=2e-3, target_scale=2e-3)
    return {"feature_spec": FEATURE_SPEC, "scaler": scaler.to_dict(), "model_sha256": "0" * 64, "kind": "lstm"}


def _scaler_mutated(c: tuple[str, Any]) -> bytes:
    return json.dumps(_meta() | {"scaler": _meta()["scaler"] | {c[0]: c[1]}}, allow_nan=True).encode()


@FUZZ
@given(raw=st.one_of(mutated(_meta()), st.binary(max_size=100), deep.map(str.encode),
                     st.tuples(st.sampled_from(sorted(_meta()["scaler"])), values).map(_scaler_mutated)))
def test_registry_meta_gives_meta_or_a_model_error(raw: bytes) -> None:
    try:
        meta, scaler = parse_meta("v", raw)
    except ModelError as exc:
        assert str(exc).startswith("model v")
        return
    assert isinstance(meta, dict) and all(math.isfinite(v) for v in scaler.to_dict().values())


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


configs = st.one_of(values.map(lambda v: json.dumps(v, allow_nan=True).encode()), deep.map(str.encode),
                    st.binary(max_size=64),
                    st.lists(st.sampled_from(["Dense", "Lambda", "TFOpLambda", "LSTM", 7, None]), max_size=3).map(
                        lambda cs: json.dumps({"class_name": "Functional", "config": {
                            "layers": [{"class_name": c, "module": "keras.layers"} for c in cs]}}).encode()))


@settings(FUZZ, max_examples=N)
@given(data=st.one_of(st.binary(max_size=300), configs.map(lambda c: _zip(
    {"metadata.json": b"{}", "config.json": c, "model.weights.h5": b""})),
    st.lists(st.sampled_from(["config.json", "metadata.json", "model.weights.h5", "x.py"]), max_size=4).map(
        lambda names: _zip(dict.fromkeys(names, b"{}")))))
def test_model_archive_check_gives_pass_or_a_model_error(data: bytes) -> None:
    try:
        check_archive("v", data, hashlib.sha256(data).hexdigest())
    except ModelError as exc:
        assert str(exc).startswith("model v")
        return
    found: list[Any] = []
    _classes(json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json")), found)
    assert found and all(c in ALLOWED_CLASSES for c, *_ in found)  # passed: only allowlisted classes


def test_the_named_hostile_inputs_are_rejected_with_their_reasons() -> None:
    """The cases of issue 17, one by one (the fuzzers above cover their neighbourhoods)."""
    good = BAR.to_dict()
    cases = {
        "number_too_long": json.dumps(good | {"volume": 10**400}),
        "too_deep": "[" * 2000 + "]" * 2000,  # 4,000 bytes: within the size limit; RecursionError before
        "non_finite": json.dumps(good | {"published_at": 1e999}),
        "bad_published_at": json.dumps(good | {"published_at": 1e300}),
        "bad_source": json.dumps(good | {"source": "rep\u202elay"}),
        "bad_ticker": json.dumps(good | {"ticker": "AAPL\n"}),
        "too_old": json.dumps(good | {"time": "0001-01-01T00:00:00+23:59"}),  # before datetime's year 1 in UTC
    }
    for reason, raw in cases.items():
        with pytest.raises(Rejected) as info:
            parse_bar_record(b"AAPL", raw.encode(), NOW)
        assert info.value.reason == reason, (reason, info.value)
    for p in (0, -1.0, 5.0):
        with pytest.raises(Rejected, match="bad_published_at"):
            parse_bar_record(b"AAPL", json.dumps(good | {"published_at": p}).encode(), NOW)
    with pytest.raises(Rejected, match="bad_source"):
        parse_bar_record(b"AAPL", json.dumps(good | {"source": "a\x00b"}).encode(), NOW)
    for key in (None, b"AAPL\n", b"K" * 600_000):
        with pytest.raises(Rejected, match="bad_key"):
            parse_bar_record(key, BAR.to_json(), NOW)
    # Training reads history with now = inf: a real-time published_at is still plausible there.
    assert parse_bar_record(b"AAPL", BAR.to_json(), math.inf) == BAR
