"""Streamed training data (training.stream) against the materialised path it replaces: the same samples and
windows bit for bit, the same subsample, the same shuffle order, the same ready share, and chunked evaluation
giving the same report as whole evaluation. Real recorded bars (../shared/data) read group by group; the
evaluation part uses the synthetic samples and fake model of tests/support/evaluation.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.support.evaluation import FakeModel, synthetic
from training import data as D
from training import evaluate as E
from training import scoring as S
from training import stream as ST
from training.train import batches

TICKERS = ["AMD", "CRM", "NFLX", "SPY"]  # CRM / NFLX: missing regular minutes; SPY: the market ticker


@pytest.fixture(scope="module")
def files(shared_data: Path) -> list[Path]:
    return [shared_data / f"{t}.csv.gz" for t in TICKERS]


@pytest.fixture(scope="module")
def whole(files: list[Path]) -> D.BarSet:
    return D.read_files(files)[0]


def _groups(files: list[Path], monkeypatch: pytest.MonkeyPatch, scratch: Path | None = None) -> ST.Groups:
    monkeypatch.setattr(ST, "GROUP_FILES", 1)  # several groups even with four files
    return ST.Groups(files=files, scratch=scratch)


def _materialised(whole: D.BarSet, cap: int | None) -> tuple[dict[str, D.Samples], tuple[int, int]]:
    """What training built before streaming: the whole catalogue, split, subsampled, materialised."""
    cat = D.catalog(whole, "SPY")
    cuts = D.split_days(np.unique(cat.days).tolist(), 0.15, 0.15)
    parts = D.split(cat, cuts)
    return {"train": D.subsample(parts["train"], cap, seed=3).samples(),
            "val": D.subsample(parts["val"], cap, seed=3).samples(),
            "test_all": D.regular(parts["test"]).samples()}, cuts


def _same(a: D.Samples, b: D.Samples) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.tickers, b.tickers)
    np.testing.assert_array_equal(a.ends, b.ends)
    assert a.targets.tobytes() == b.targets.tobytes()
    assert a.windows.tobytes() == b.windows.tobytes()  # bit for bit


@pytest.mark.parametrize("cached", [False, True], ids=["reread", "cached"])
def test_streamed_samples_equal_materialised_ones(files: list[Path], whole: D.BarSet, tmp_path: Path, cached: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass re-reads the files, or (training) loads the first pass's checked bars from scratch files."""
    groups = _groups(files, monkeypatch, tmp_path if cached else None)
    plan = ST.plan(groups, "SPY")
    assert plan.market is not None and plan.bars == sum(s.minutes.size for s in whole.values())
    ref, cuts = _materialised(whole, cap=20_000)
    all_days = sorted({int(d) for v in plan.days.values() for d in v[0]})
    assert D.split_days(all_days, 0.15, 0.15) == cuts
    plan.split(cuts)
    assert plan.subsample("train", 20_000, seed=3) == 20_000
    assert plan.subsample("val", 20_000, seed=3) == len(ref["val"])
    assert plan.test_regular() == len(ref["test_all"])
    for which, size, kw in (("train", 3000, {}), ("val", 777, {}),
                            ("test_all", 5000, {"whole": True, "keep": ST.regular})):
        parts = list(ST.chunks(groups, plan, which, "SPY", plan.market, size, **kw))
        assert max(len(p) for p in parts) <= size or kw  # bounded chunks (a whole ticker may exceed them)
        _same(D.Samples.concat(parts), ref[which])
        if kw:  # whole tickers: no ticker in two chunks
            owners = [set(p.tickers.tolist()) for p in parts]
            assert sum(len(o) for o in owners) == len(set().union(*owners))
    assert groups.passes == 4  # one plan pass and one per split, each a group of files at a time
    assert len(list(tmp_path.glob("bars-*.npz"))) == (len(files) if cached else 0)


def test_history_in_memory_moves_to_scratch_files(whole: D.BarSet, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kafka path: the bars read go into scratch files a group each, and come back the same, every pass."""
    monkeypatch.setattr(ST, "GROUP_TICKERS", 3)
    groups = ST.Groups(bars=dict(whole), scratch=tmp_path)
    assert groups.bars is None and len(list(tmp_path.glob("bars-*.npz"))) == 2
    for _ in range(2):
        got = {t: s for g in groups for t, s in g.items()}
        assert list(got) == sorted(whole)
        for t, s in whole.items():
            assert got[t].minutes.tobytes() == s.minutes.tobytes() and got[t].ohlcv.tobytes() == s.ohlcv.tobytes()


def test_ticker_spanning_files_falls_back_to_one_group(files: list[Path], whole: D.BarSet, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout with a ticker in several files (e.g. a file per day) still gives whole series."""
    frame = pd.read_csv(files[0])
    half = len(frame) // 2
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    frame.iloc[:half].assign(ticker="AMD").to_csv(first, index=False)
    frame.iloc[half:].assign(ticker="AMD").to_csv(second, index=False)
    groups = _groups([first, second], monkeypatch)
    plan = ST.plan(groups, None)
    assert groups.single and list(plan.days) == ["AMD"]
    ref = D.catalog({"AMD": whole["AMD"]}, None)
    assert int(plan.days["AMD"][1].sum()) == len(ref)


def test_catalog_ticker_chunks_are_whole_tickers_in_order(whole: D.BarSet) -> None:
    """What `minutecast evaluate` scores a chunk at a time: the catalogue's samples, bit for bit."""
    cat = D.regular(D.catalog(whole, "SPY"))
    parts = list(cat.ticker_chunks(30_000))
    assert len(parts) > 1 and all(len(set(p.tickers.tolist()) & set(q.tickers.tolist())) == 0
                                  for p, q in zip(parts, parts[1:], strict=False))
    _same(D.Samples.concat(parts), cat.samples())


def test_ready_share_from_gathered_counts_equals_whole(whole: D.BarSet) -> None:
    days = np.unique(np.concatenate([S.session_ids(s.minutes) for s in whole.values()]))[-5:]
    expected = S.ready_share(whole, days=days.tolist())
    rank0 = {t: S.ready_counts(s) for t, s in whole.items() if t < "CRM~"}
    rank1 = {t: S.ready_counts(s) for t, s in whole.items() if t >= "CRM~"}
    assert rank0 and rank1
    assert S.ready_share_of(rank0 | rank1, days=days.tolist()) == expected
    assert 0.9 < expected["ready_share_regular_hours"] < 1.0  # CRM / NFLX miss a few minutes


def test_spill_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(1000, 60, 13)).astype(np.float32)
    sp = ST.Spill(tmp_path / "x.f32", (60, 13))
    sp.append(x[:400])
    sp.append(x[400:])
    idx = np.array([999, 0, 5, 5, 512])
    assert len(sp) == 1000 and sp.read(idx).tobytes() == x[idx].tobytes()
    assert sp.range(990, 2000).tobytes() == x[990:].tobytes()
    with pytest.raises(Exception, match="row 1000"):
        sp.read(np.array([1000]))
    sp.close()
    assert not (tmp_path / "x.f32").exists()


def test_streamed_batches_keep_the_in_memory_shuffle_order(tmp_path: Path) -> None:
    """The training batches read from the scratch file are those Dataset.from_tensor_slices((x, y)) gave."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 60, 13)).astype(np.float32)
    y = rng.normal(size=3000).astype(np.float32)
    sp = ST.Spill(tmp_path / "x.f32", (60, 13))
    sp.append(x)
    before = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1000, seed=5, reshuffle_each_iteration=True)
              .repeat().batch(512))
    got = batches(tf, sp, y, 512, seed=5, buffer=1000)
    for (xa, ya), (xb, yb) in zip(before.take(14), got.take(14), strict=True):  # > 2 epochs: reshuffled
        assert xa.numpy().tobytes() == xb.numpy().tobytes() and ya.numpy().tobytes() == yb.numpy().tobytes()
    sp.close()


# -- chunked evaluation ------------------------------------------------------------------------------------
def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "created_at"}


def test_chunked_evaluation_gives_the_whole_evaluation_figures() -> None:
    test, _ = synthetic(("AAA", "BBB", "CCC", "DDD"))
    model, current = FakeModel(0.9, "new", bias=1e-4), FakeModel(1.1, "cur")
    whole, preds = E.build_report(test, model, current, baseline_scale=(1.05, 1.1), chunk=len(test))
    sizes = [len(c) for c in E.ticker_chunks(test, 2000)]
    assert len(sizes) == 4  # one ticker a chunk: the calibration state starts fresh for each
    chunked, preds_c = E.build_report(test, model, current, baseline_scale=(1.05, 1.1), chunk=2000)
    for name in preds:
        np.testing.assert_allclose(preds_c[name], preds[name], rtol=1e-12)
    _close(_figures(chunked), _figures(whole))
    assert whole["samples"] == len(test) and len(whole["per_ticker"]) == 4
    # Scored pieces concatenated (what the ranks gather) give the same report as one whole piece.
    pieces = [E.score(c, model, current, (1.05, 1.1)) for c in E.ticker_chunks(test, 3000)]
    _close(_figures(E.report_of(E.Scored.concat(pieces), model, current, baseline_scale=(1.05, 1.1))),
           _figures(whole))
    into = E.score_all(E.ticker_chunks(test, 3000), len(test), model, current, (1.05, 1.1))  # what training does
    assert len(into) == len(test)
    _close(_figures(E.report_of(into, model, current, baseline_scale=(1.05, 1.1))), _figures(whole))


def test_a_ticker_split_across_chunks_changes_the_figures() -> None:
    """The property the equality above rests on: splitting a ticker restarts its online calibration."""
    test, _ = synthetic(("AAA", "BBB"))
    model = FakeModel(0.7, "narrow")
    whole = E.build_report(test, model, None, chunk=len(test))[0]
    half = np.flatnonzero(test.tickers == "AAA")[: (test.tickers == "AAA").sum() // 2]
    rest = np.setdiff1d(np.arange(len(test)), half)
    split = E.Scored.concat([E.score(test.take(half), model, None, (1.0, 1.0)),
                             E.score(test.take(rest), model, None, (1.0, 1.0))])
    assert E.report_of(split, model, None)["coverage_80"] != whole["coverage_80"]


def _close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path
