"""Message schemas (versioned JSON) and their validation, shared by every service.

Every message carries ``"v"`` (schema version). Every decoder here (:func:`parse_bar`,
:func:`parse_bar_record`, :meth:`WindowReady.from_json`, :meth:`Forecast.from_dict` / ``from_json``,
:meth:`DeadLetter.from_json`) returns a value or raises :class:`minutecast.errors.Rejected` whose
``reason`` is one of :data:`REASONS`, never another exception, whatever the input (fuzzed in
``tests/test_decoders_fuzz.py``); dead letters carry that code so operators can count
and filter them. Text fields are refused, not cleaned, when they hold control, bidi-override or
zero-width characters (``bad_source`` for a bar's ``source``).
"""

from __future__ import annotations

from minutecast.decoding import FUTURE_SLACK_S as FUTURE_SLACK_S
from minutecast.decoding import MAX_KEY_BYTES as MAX_KEY_BYTES
from minutecast.decoding import MAX_TIME as MAX_TIME
from minutecast.decoding import MIN_TIME as MIN_TIME
from minutecast.decoding import PUBLISHED_SLACK_S as PUBLISHED_SLACK_S
from minutecast.decoding import TICKER_RE as TICKER_RE
from minutecast.decoding import is_ticker as is_ticker
from minutecast.decoding import iso_minute as iso_minute
from minutecast.decoding import parse_time as parse_time
from minutecast.schemas.bar import Bar as Bar
from minutecast.schemas.bar import parse_bar as parse_bar
from minutecast.schemas.bar import parse_bar_record as parse_bar_record
from minutecast.schemas.common import *  # noqa: F403 - versions, limits, REASONS, QUANTILES: one list of names
from minutecast.schemas.events import DeadLetter as DeadLetter
from minutecast.schemas.events import WindowReady as WindowReady
from minutecast.schemas.forecast import Forecast as Forecast
