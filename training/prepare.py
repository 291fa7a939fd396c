"""Steps of training/train.py before the fit: the run's context (:class:`Run`), the data as positions
(pass 1, the date split, the subsample: :func:`load_data`) and the model inputs (pass 2: the scaler and the
calibrated baselines from allreduced sums; pass 3: the training and validation inputs into scratch files
and the HAR baseline's scale:
:func:`prepare_inputs`). Every rank runs them in lockstep; nothing here holds every window.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minutecast import intervals as I  # noqa: N812
from minutecast.errors import MinutecastError
from minutecast.features import N_FEATURES, Scaler, make_inputs, make_targets
from minutecast.har import Har, HarFit
from minutecast.kafka import end_offsets
from minutecast.model import Preset
from minutecast.settings import TrainingSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from minutecast.window import WINDOW, regular_hours
from training import data as D
from training import memory
from training import stream as ST
from training.ranks import Ranks


# -- set-up: TensorFlow, the ranks, the resolved configuration ----------------------------------------------
@dataclass
class Run:
    """What every step reads: the configuration, TensorFlow, this rank's place, the log and the run's id."""

    settings: TrainingSettings
    preset: Preset
    tf: Any
    ranks: Ranks
    log: logging.Logger
    run_id: str
    config: dict[str, Any]  # the resolved configuration: in every checkpoint and the model's meta
    t_start: float
    scratch: tempfile.TemporaryDirectory[str]  # checked bars, model inputs: removed after scoring

    @property
    def comm(self) -> Any:
        return self.ranks.comm

    @property
    def is_chief(self) -> bool:  # rank 0 logs, checkpoints, saves and reports
        return self.ranks.rank == 0



# -- data: this rank's share of the source, re-read a group of tickers at a time on each pass ---------------
@dataclass
class Data:
    """The samples as positions (no windows): the source's groups, the plan (pass 1), the date split and the
    counts per rank and over all ranks; :meth:`chunks` builds the windows of a split a chunk at a time."""

    groups: ST.Groups
    plan: ST.Plan
    source: dict[str, Any]  # where the bars came from and the repeats left out: the model's meta
    market: D.Series | None  # the market ticker's series (market context), from whichever rank read it
    ready: dict[str, Any]  # ticker -> ready counts (the report's ready share)
    all_days: list[int]
    cuts: tuple[int, int]  # first validation day, first test day
    mine: dict[str, int]  # this rank's samples per split
    totals: dict[str, int]  # every rank's
    market_ticker: str | None

    def chunks(self, which: str, chunk: int = ST.CHUNK, **kw: Any) -> Iterator[D.Samples]:
        return memory.released(ST.chunks(self.groups, self.plan, which, self.market_ticker, self.market, chunk, **kw))


def load_data(run: Run, offsets_file: Path | None) -> Data:
    """Pass 1 over this rank's bars (samples per ticker and date, no windows), then the date split (the same
    cut dates on every rank) and the subsample."""
    groups, source = open_source(run, offsets_file)
    plan = ST.plan(groups, run.settings.market_ticker)
    comm = run.comm
    # Repeats of a minute left out on every rank (conflicting ones serving dead-lettered): in the report.
    repeats = comm.allgather_object((groups.firsts.duplicates, groups.firsts.conflicts))
    source |= {"duplicates": sum(r[0] for r in repeats), "conflicting_duplicates": sum(r[1] for r in repeats)}
    if run.is_chief:
        run.log.info("left out repeated minutes (first value wins): %d identical, %d conflicting",
                     source["duplicates"], source["conflicting_duplicates"])
    # The market ticker lives on one rank: it shares the series with the others (market context).
    market = next((m for m in comm.allgather_object(plan.market) if m is not None), None)
    ready = {t: c for part in comm.allgather_object(plan.ready) for t, c in part.items()}  # the ready share
    all_days = sorted(set().union(*comm.allgather_object({int(d) for v in plan.days.values() for d in v[0]})))
    cuts = D.split_days(all_days, run.settings.val_frac, run.settings.test_frac)
    plan.split(cuts)
    mine, totals = subsample(run, plan)
    return Data(groups, plan, source, market, ready, all_days, cuts, mine, totals, run.settings.market_ticker)


def open_source(run: Run, offsets_file: Path | None) -> tuple[ST.Groups, dict[str, Any]]:
    """This rank's share of the recorded files (``--bars``) or of the bar topic's partitions, up to the
    snapshot of end offsets (``--offsets``, else rank 0 takes one), as groups of tickers in scratch files."""
    settings, rank, size, scratch = run.settings, run.ranks.rank, run.ranks.size, Path(run.scratch.name)
    if settings.bars is not None:
        files = D.bar_files(settings.bars)
        mine = [files[i] for i in D.shard(list(range(len(files))), rank, size)]
        tickers = settings.tickers.split(",") if settings.tickers else None
        groups = ST.Groups(files=mine, tickers=tickers, scratch=scratch)  # first value wins, as serving
        return groups, {"bars_dir": str(settings.bars.resolve()), "files": [f.name for f in files]}
    topic = Topics(settings.namespace).bars
    snapshot = None
    if offsets_file is not None:
        snapshot = json.loads(offsets_file.read_text())
    elif run.is_chief:
        snapshot = {"topic": topic, "end_offsets": end_offsets(settings.kafka, topic)}
    snapshot = run.comm.broadcast_object(snapshot, root_rank=0)
    offsets = {int(p): int(o) for p, o in snapshot["end_offsets"].items()}
    bars, krange = D.read_topic(settings.kafka, snapshot["topic"], offsets, rank=rank, size=size,
                                allowed=allowlist(settings))  # the same records the Faust worker accepts
    groups = ST.Groups(bars=bars, scratch=scratch)  # into scratch files: the bars are freed on return
    groups.firsts = D.FirstValues(krange.duplicates, krange.conflicts)
    run.log.info("read %d bars of %d tickers from partitions %s", krange.bars, len(bars), krange.partitions)
    return groups, {"topic": snapshot["topic"], "end_offsets": offsets}


def subsample(run: Run, plan: ST.Plan) -> tuple[dict[str, int], dict[str, int]]:
    """Draw each rank's share of the sample cap (positions only); this rank's counts and every rank's."""
    seed, size = run.settings.seed + run.ranks.rank, run.ranks.size
    cap = None if run.preset.max_samples is None else math.ceil(run.preset.max_samples / size)
    mine = {"train": plan.subsample("train", cap, seed=seed), "val": plan.subsample("val", cap, seed=seed),
            "test": plan.test_regular()}
    counts = run.comm.allgather_object(mine)
    totals = {k: sum(c[k] for c in counts) for k in ("train", "val", "test")}
    if min(c["train"] for c in counts) == 0:
        raise MinutecastError(f"a rank has no training samples (per rank: {counts}); use fewer ranks")
    if totals["val"] == 0 or totals["test"] == 0:
        raise MinutecastError(f"empty validation or test period ({totals})")
    return mine, totals


# -- inputs: the scaler, the calibrated baseline, the model inputs in scratch files -------------------------
@dataclass
class Inputs:
    scaler: Scaler
    ratios: np.ndarray  # the baseline's ratios on every rank's training samples
    baseline_scale: tuple[float, float]
    har: Har  # the HAR-style baseline, fitted and calibrated on the training samples in regular hours
    x_train: ST.Spill
    y_train: np.ndarray
    x_val: ST.Spill
    y_val: np.ndarray
    val_last: np.ndarray
    val_ends: np.ndarray
    val_har: np.ndarray  # (N_val, 5) the HAR baseline's log quantiles of the validation samples (the blend's fit)


def prepare_inputs(run: Run, data: Data) -> Inputs:
    """Pass 2: the scaler, the calibrated window-vol baseline and the HAR baseline's least-squares fit on
    training samples only (sums allreduced); pass 3: the model inputs of the training and validation samples
    into scratch files, and on the way the HAR baseline's ratios (its levels' scales)."""
    from training.callbacks import allgather_arrays  # TensorFlow: after its set-up

    tf, comm, scratch = run.tf, run.comm, Path(run.scratch.name)
    stats, ratios_mine, har_sums = train_stats(data.chunks("train"))
    scaler = Scaler.from_stats(comm.allreduce(tf.constant(stats, tf.float64), op=comm.Sum).numpy())
    (ratios,) = allgather_arrays(comm, ratios_mine)
    baseline_scale = I.scale_from_ratios(ratios)
    har_fit = HarFit.from_vector(comm.allreduce(tf.constant(har_sums.to_vector(), tf.float64), op=comm.Sum).numpy())
    har = har_fit.har()
    har_ratios: list[np.ndarray] = [np.empty(0)]
    x_train, y_train, _, _ = spill(data.chunks("train"), scaler, scratch / "train.f32",
                                   each=lambda s: har_ratios.append(har.ratios(*_regular(s))))
    har = har.calibrated(allgather_arrays(comm, np.concatenate(har_ratios))[0])
    val_har: list[np.ndarray] = [np.empty((0, len(I.Z)))]
    x_val, y_val, val_last, val_ends = spill(data.chunks("val"), scaler, scratch / "val.f32",
                                             each=lambda s: val_har.append(har.log_quantiles(s.windows)))
    if run.is_chief:
        run.log.info("samples train %d / val %d / test %d (all ranks); scaler %s; baseline scale c80 %.3f c90 %.3f; "
                     "%d pass(es) over the bars so far", data.totals["train"], data.totals["val"], data.totals["test"],
                     scaler.to_dict(), *baseline_scale, data.groups.passes)
        run.log.info("HAR baseline fitted on %d training samples in regular hours, scale c80 %.3f c90 %.3f",
                     har_fit.n, *har.scale)
    return Inputs(scaler, ratios, baseline_scale, har, x_train, y_train, x_val, y_val, val_last, val_ends,
                  np.concatenate(val_har))


def _regular(s: D.Samples) -> tuple[np.ndarray, np.ndarray]:
    """The windows and targets of the samples in regular hours (the baselines are fitted where they are scored)."""
    reg = regular_hours(s.ends)
    return s.windows[reg], s.targets[reg]


def train_stats(chunks: Iterable[D.Samples]) -> tuple[np.ndarray, np.ndarray, HarFit]:
    """:meth:`Scaler.stats` (sums) of the training samples, the window-vol baseline's ratios and the HAR
    baseline's least-squares sums on those of them in regular hours, a chunk at a time."""
    stats = np.zeros(Scaler.N_STATS)
    ratios = [np.empty(0)]
    har = HarFit()
    for s in chunks:
        stats += Scaler.stats(s.windows, s.targets)
        windows, targets = _regular(s)
        ratios.append(I.baseline_ratios(windows, targets))
        har.add(windows, targets)
    return stats, np.concatenate(ratios), har


def spill(chunks: Iterable[D.Samples], scaler: Scaler, path: Path,
          each: Callable[[D.Samples], object] | None = None) -> tuple[ST.Spill, np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs of the samples into a scratch file (:class:`training.stream.Spill`, float32 rows
    (WINDOW, N_FEATURES)), and their targets (float32, scaled), last closes and as-of minutes in memory.
    ``each``: also called with every chunk (what else needs this pass over the samples)."""
    x = ST.Spill(path, (WINDOW, N_FEATURES))
    y, last, ends = [np.empty(0, np.float32)], [np.empty(0)], [np.empty(0, np.int64)]
    for s in chunks:
        if each is not None:
            each(s)
        x.append(make_inputs(s.windows, scaler))
        y.append(make_targets(s.windows, s.targets, scaler))
        last.append(s.last_close.copy())  # a copy: the view would keep the chunk's windows alive
        ends.append(s.ends)
    return x, np.concatenate(y), np.concatenate(last), np.concatenate(ends)
