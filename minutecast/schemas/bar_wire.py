"""The bar's wire format, written once: its fields in order and the JSON form of each.

Three writers/readers follow it: :meth:`minutecast.schemas.Bar.to_json` (the reference: ``json.dumps`` of
``Bar.to_dict``, without whitespace), the producers' fast encoder (:func:`producers.bars.encode`, built from
:func:`encoder_template` and :func:`stamp_template`) and the Faust worker's fast decoder
(:func:`streams.batch.fast_bar`, whose regular expression is :func:`canonical_pattern`). Change the format
here; ``tests/test_batch_decode.py``, ``tests/test_producers_unit.py`` and ``tests/test_schemas.py`` prove
both fast paths byte-identical to the reference.
"""

from __future__ import annotations

import json

from minutecast.schemas.common import BAR_VERSION

# (JSON name, form), in the order Bar.to_dict writes them. Forms:
#   version: the literal BAR_VERSION;  ticker: a validated ticker, written without escapes;
#   time: the bar's minute as "YYYY-MM-DDTHH:MM:00Z" (UTC);  number: a float as json.dumps writes it (repr);
#   source: a short name, json.dumps'd.
WIRE: tuple[tuple[str, str], ...] = (
    ("v", "version"), ("ticker", "ticker"), ("time", "time"), ("open", "number"), ("high", "number"),
    ("low", "number"), ("close", "number"), ("volume", "number"), ("source", "source"))
# Written last and only when set (the publisher stamps it at send time).
OPTIONAL: tuple[tuple[str, str], ...] = (("published_at", "number"),)
SOURCE_MAX = 64  # characters of a source a decoder takes (longer: bad_source) ...
SOURCE_KEPT = 32  # ... of which the decoded Bar keeps this many
FIELDS = tuple(name for name, _ in WIRE)
OPTIONAL_FIELDS = tuple(name for name, _ in OPTIONAL)

# The fast decoder accepts the canonical form only: ASCII names without escapes, a minute-aligned UTC time,
# numbers without a sign (every valid price, volume and publish time is positive; "-0" would decode to 0.0 as
# JSON but -0.0 as a float) and integers of at most 15 digits (exact as floats, as parse_bar's 2**53 bound
# requires). Anything else takes the reference parser. Groups per form: ticker 1, time 3 (date, hour, minute),
# number 1, source 1.
_NUM = rb"((?:0|[1-9][0-9]{0,14})(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
_PATTERN = {
    "version": str(BAR_VERSION).encode(),
    "ticker": rb'"([A-Z0-9.\-]{1,12})"',
    "time": rb'"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}):([0-9]{2}):00Z"',
    "number": _NUM,
    "source": rb'"([A-Za-z0-9_.\-]{1,%d})"' % SOURCE_MAX,  # cut to SOURCE_KEPT by the decoder, as the reference
}
# The fast encoder's %-format of each form: a ticker (validated, so no escaping), numpy's ISO seconds of the
# minute ("YYYY-MM-DDTHH:MM:SS", the Z is added here) and floats as repr, exactly as json.dumps writes them.
_FORMAT = {"version": str(BAR_VERSION), "ticker": '"%s"', "time": '"%sZ"', "number": "%r"}


def canonical_pattern() -> bytes:
    """The regular expression (bytes) of a bar in the canonical form, anchored at both ends. Groups:
    ticker, date, hour, minute, open, high, low, close, volume, source, published_at (optional)."""
    fields = b",".join(b'"' + name.encode() + b'":' + _PATTERN[form] for name, form in WIRE)
    optional = b"".join(b'(?:,"' + name.encode() + b'":' + _PATTERN[form] + b")?" for name, form in OPTIONAL)
    return rb"\{" + fields + optional + rb"\}\Z"


def encoder_template(source: str) -> str:
    """A %-format of a bar's JSON without its optional fields and closing brace, for one ``source``: its
    arguments are (ticker, ISO seconds of the minute, open, high, low, close, volume)."""
    constant = {"source": json.dumps(source).replace("%", "%%")}
    return "{" + ",".join(f'"{name}":{constant.get(form) or _FORMAT[form]}' for name, form in WIRE)


def stamp_template() -> str:
    """A %-format of the optional tail and the closing brace: its argument is ``published_at`` (epoch s)."""
    return "".join(f',"{name}":{_FORMAT[form]}' for name, form in OPTIONAL) + "}"
