"""Command-line flags over :class:`minutecast.settings.TrainingSettings`, the one source of training options.

Every hyperparameter and run option is a ``TrainingSettings`` field (env ``MINUTECAST_<FIELD>``, default and
comment there). An entry point (``minutecast train``, ``python -m training.train``) adds the flags of the
fields it takes (:func:`add_flags`) and builds its settings once (:func:`from_args`): the environment, then
each flag given on its command line over its field. Flags default to None (not given), so ``--epochs 0`` and
``--threads 0`` are values. :func:`as_flags` writes settings back as flags: ``minutecast train`` hands its
resolved options to the ``python -m training.train`` child that way (the child inherits the environment).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from minutecast import flags
from minutecast.flags import Flag
from minutecast.settings import TrainingSettings

# Field -> its flag (the field's meaning, units and default: minutecast/settings.py).
FLAGS: dict[str, Flag] = {
    "preset": Flag("--preset", str, "model preset: default, gaussian, first, tiny"),
    "epochs": Flag("--epochs", int, "passes over the training samples (default: the preset's; 0: untrained)"),
    "batch_size": Flag("--batch-size", int, "samples per step per rank (default: the preset's)"),
    "learning_rate": Flag("--learning-rate", float, "Adam learning rate of one rank, x ranks (default: the preset's)"),
    "max_samples": Flag("--max-samples", int, "cap on training samples, all ranks (default: the preset's)"),
    "seed": Flag("--seed", int, "initial weights and shuffling"),
    "val_frac": Flag("--val-frac", float, "share of trading dates for validation (before the test dates)"),
    "test_frac": Flag("--test-frac", float, "share of trading dates at the end for the test report and the gate"),
    "threads_per_rank": Flag("--threads", int, "TensorFlow threads per rank (0: TensorFlow decides)"),
    "fp16_allreduce": Flag("--fp16-allreduce", None, "compress gradients to fp16 for the allreduce"),
    "backward_passes": Flag("--backward-passes", int, "local gradient accumulation steps per allreduce"),
    "keep_checkpoints": Flag("--keep-checkpoints", int, "per-epoch checkpoints kept"),
    "keep_runs": Flag("--keep-runs", int, "training runs (and their checkpoints) kept"),
    "keep_versions": Flag("--keep-versions", int, "model versions kept in the registry (CURRENT always stays)"),
    "promote": Flag("--promote", None, "run the promotion gate and promote a model that passes it"),
    "bars": Flag("--bars", Path, "train from recorded bar files (directory or file) instead of Kafka"),
    "tickers": Flag("--tickers", str, "comma-separated subset of tickers (with --bars only)"),
    "np": Flag("--np", int, "Horovod ranks on this host (1: no horovodrun)"),
    "every": Flag("--every", str, "retrain periodically, e.g. 1h (default: once)"),
    "first_preset": Flag("--first-preset", str,
                         "preset to use while no model is promoted yet (a short one gives a first model fast)"),
}
# What one training run (python -m training.train, every rank) resolves; minutecast train forwards these.
RUN_FIELDS = ("preset", "epochs", "batch_size", "learning_rate", "max_samples", "seed", "val_frac", "test_frac",
              "threads_per_rank", "fp16_allreduce", "backward_passes", "keep_checkpoints", "keep_runs",
              "keep_versions", "promote", "bars", "tickers")
# What only minutecast train reads (how it starts runs).
CLI_FIELDS = ("np", "every", "first_preset")


def add_flags(p: argparse.ArgumentParser, fields: Iterable[str]) -> None:
    """A flag per field, default None (not given): the environment's value (or the field's default) stays."""
    flags.add_flags(p, FLAGS, fields, env_in_help=True)


def from_args(args: argparse.Namespace) -> TrainingSettings:
    """The settings from the environment, each flag given in ``args`` over its field. A bad value is a
    ConfigError naming the flag (when given) or the variable it came from."""
    return flags.settings_from(TrainingSettings, args, FLAGS)


def as_flags(settings: TrainingSettings, fields: Iterable[str] = RUN_FIELDS) -> list[str]:
    """Flags that make a parser with :func:`add_flags` resolve ``fields`` to ``settings``' values (a field
    that is None is left out: the child resolves it to None too, from the same environment)."""
    out: list[str] = []
    for name in fields:
        f, value = FLAGS[name], getattr(settings, name)
        if value is None:
            continue
        if f.type is None:
            out.append(f.flag if value else "--no-" + f.flag.removeprefix("--"))
        else:
            out += [f.flag, str(value)]
    return out


def options(settings: TrainingSettings, fields: Iterable[str] = RUN_FIELDS) -> dict[str, Any]:
    """``fields`` of ``settings`` as JSON-safe values (paths as strings)."""
    return {name: str(v) if isinstance(v := getattr(settings, name), Path) else v for name in fields}
