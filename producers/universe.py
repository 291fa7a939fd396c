"""Ticker universes for producers: ``--tickers`` and shards; the lists themselves are :mod:`minutecast.universe`."""

from __future__ import annotations

from collections.abc import Sequence

from minutecast.universe import from_file as from_file
from minutecast.universe import parse as _parse
from minutecast.universe import sp500 as sp500


def from_arg(value: str) -> list[str]:
    """``--tickers AAPL,MSFT`` (commas or spaces)."""
    return _parse([value], "--tickers")


def shard(items: Sequence[str], index: int, count: int) -> list[str]:
    """Every ``count``-th item starting at ``index``: process ``index`` of ``count`` takes these."""
    return list(items[index::count])
