"""Ticker universes: the S&P 500 list kept as data (``minutecast/data/sp500.csv``), ticker files, and the
ticker allowlist the bar decoders apply (reason ``unknown_ticker``).

The allowlist is off by default (synthetic and benchmark tickers must work locally) and on in
docker-compose.yml: ``MINUTECAST_TICKER_ALLOWLIST=true`` takes the packaged S&P 500 list, or the file
``MINUTECAST_TICKER_ALLOWLIST_FILE`` (one ticker a line, ``#`` comments); the market ticker
(``MINUTECAST_MARKET_TICKER``, SPY) is always allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from minutecast.decoding import is_ticker
from minutecast.errors import ConfigError

if TYPE_CHECKING:
    from minutecast.settings import CommonSettings


def parse(lines: Sequence[str], origin: str) -> list[str]:
    """One ticker per line (or comma/space separated); ``#`` comments and a ``ticker`` header ignored."""
    out: list[str] = []
    for raw in lines:
        line = raw.split("#", 1)[0]
        for tok in line.replace(",", " ").split():
            t = tok.strip().upper()
            if t in ("TICKER", "SYMBOL"):
                continue
            if not is_ticker(t):
                raise ConfigError(f"{origin}: {tok!r} is not a ticker (yfinance spelling, e.g. BRK-B)")
            if t not in out:
                out.append(t)
    return out


def sp500() -> list[str]:
    """The S&P 500 constituents in yfinance spelling (~503 symbols; see the file's header)."""
    text = resources.files("minutecast").joinpath("data/sp500.csv").read_text()
    return parse(text.splitlines(), "sp500.csv")


def from_file(path: Path | str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tickers file {p} does not exist")
    return parse(p.read_text().splitlines(), str(p))


def allowlist(settings: CommonSettings) -> frozenset[str] | None:
    """The tickers the bar decoders accept (None: any well-formed ticker); see the module docstring."""
    if not settings.ticker_allowlist:
        return None
    f = settings.ticker_allowlist_file
    tickers = from_file(f) if f is not None else sp500()
    return frozenset([*tickers, settings.market_ticker])
