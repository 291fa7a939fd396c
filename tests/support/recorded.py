"""Excerpts of the shared recorded bars (``shared/data/bars-1m``) in the recorded files' own layout."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path


def regular_hours_dir(shared_data: Path, out: Path, tickers: Iterable[str], days: Iterable[str]) -> Path:
    """Regular hours (09:30-15:59 New York) of ``days`` (``YYYY-MM-DD``) of ``tickers``, one ``<T>.csv`` each under
    ``out`` (made here), for the replay producer. The sparse post-market minutes at the end of a day would leave no
    window ready (see the window policy)."""
    out.mkdir()
    wanted = tuple(days)
    for t in tickers:
        with gzip.open(shared_data / f"{t}.csv.gz", "rt") as src:
            header, *rows = src.read().splitlines()
        keep = [r for r in rows if r[:10] in wanted and "09:30" <= r[11:16] <= "15:59"]
        (out / f"{t}.csv").write_text("\n".join([header, *keep]) + "\n")
    return out
