"""Ticker universes: the S&P 500 list kept as data (``minutecast/data/sp500.csv``), files, and shards."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from minutecast.errors import ConfigError
from minutecast.schemas import TICKER_RE


def _parse(lines: Sequence[str], origin: str) -> list[str]:
    """One ticker per line (or comma/space separated); ``#`` comments and a ``ticker`` header ignored."""
    out: list[str] = []
    for raw in lines:
        line = raw.split("#", 1)[0]
        for tok in line.replace(",", " ").split():
            t = tok.strip().upper()
            if t in ("TICKER", "SYMBOL"):
                continue
            if not TICKER_RE.match(t):
                raise ConfigError(f"{origin}: {tok!r} is not a ticker (yfinance spelling, e.g. BRK-B)")
            if t not in out:
                out.append(t)
    return out


def sp500() -> list[str]:
    """The S&P 500 constituents in yfinance spelling (~503 symbols; see the file's header)."""
    text = resources.files("minutecast").joinpath("data/sp500.csv").read_text()
    return _parse(text.splitlines(), "sp500.csv")


def from_file(path: Path | str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tickers file {p} does not exist")
    return _parse(p.read_text().splitlines(), str(p))


def from_arg(value: str) -> list[str]:
    """``--tickers AAPL,MSFT`` (commas or spaces)."""
    return _parse([value], "--tickers")


def shard(items: Sequence[str], index: int, count: int) -> list[str]:
    """Every ``count``-th item starting at ``index``: process ``index`` of ``count`` takes these."""
    return list(items[index::count])
