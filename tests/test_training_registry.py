"""Registry (save / load / promote, refusal of corrupt models), the promotion gate, the scaler statistics and
`minutecast evaluate --json` on real recorded bars. Models are the tiny preset; paths are tmp dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minutecast.errors import ModelError
from minutecast.features import FEATURE_SPEC, Scaler
from minutecast.registry import Registry
from training import data as D
from training import evaluate as E

FILES = ("AAPL.csv.gz", "SPY.csv.gz")


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> D.Samples:
    """Two tickers' first 8 trading dates of real bars."""
    s = D.build_samples(D.load_files([shared_data / f for f in FILES]))
    days = s.days
    return s.take(np.flatnonzero(days < np.unique(days)[8]))


@pytest.fixture(scope="module")
def scaler(samples: D.Samples) -> Scaler:
    return D.scaler_from_stats(D.scaler_stats(samples))


def tiny_model(move_bias: float = 0.0):
    """The tiny preset; its output starts at 0 (persistence); ``move_bias`` shifts every forecast's move."""
    from minutecast.model import build_model, get_preset

    model = build_model(get_preset("tiny"))
    model.get_layer("move").bias.assign([move_bias])
    return model


def test_scaler_from_allreduced_stats_matches_fit(samples: D.Samples) -> None:
    halves = [samples.take(np.arange(0, len(samples), 2)), samples.take(np.arange(1, len(samples), 2))]
    summed = D.scaler_stats(halves[0]) + D.scaler_stats(halves[1])  # what the Horovod allreduce computes
    fitted = Scaler.fit(samples.windows, samples.targets).to_dict()
    for k, v in D.scaler_from_stats(summed).to_dict().items():
        assert v == pytest.approx(fitted[k], rel=1e-6), k


def test_split_is_by_date_and_keeps_order(samples: D.Samples) -> None:
    cuts = D.split_days(samples.days.tolist())
    parts = D.split(samples, cuts)
    assert sum(len(p) for p in parts.values()) == len(samples)
    assert parts["train"].days.max() < parts["val"].days.min() <= parts["val"].days.max() < parts["test"].days.min()
    assert np.isfinite(samples.targets).all()


def test_save_load_promote_roundtrip(tmp_path: Path, samples: D.Samples, scaler: Scaler) -> None:
    reg = Registry(tmp_path)
    assert reg.current_version() is None and reg.versions() == []
    version = reg.save(tiny_model(), scaler, {"config": {"preset": "tiny"}, "data": {"end_offsets": {"0": 5}}})
    assert reg.versions() == [version] and reg.current_version() is None
    served = reg.load(version)
    assert served.kind == "lstm" and served.scaler == scaler and served.meta["feature_spec"] == FEATURE_SPEC
    assert served.predict_prices(np.empty((0, 60, 2))).shape == (0,)
    pred = served.predict_prices(samples.windows[:100])
    np.testing.assert_array_equal(pred, samples.windows[:100, -1, 0])  # zero output = persistence, exactly
    reg.promote(version)
    assert reg.current_version() == version


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["truncate_model", "no_meta", "bad_json", "other_features", "wrong_shape"])
def test_corrupt_model_is_refused_and_current_kept(tmp_path: Path, scaler: Scaler, damage: str) -> None:
    reg = Registry(tmp_path)
    good = reg.save(tiny_model(), scaler, {})
    reg.promote(good)
    bad = reg.save(tiny_model(), scaler, {})
    d = tmp_path / bad
    if damage == "truncate_model":
        (d / "model.keras").write_bytes((d / "model.keras").read_bytes()[:500])
    elif damage == "no_meta":
        (d / "meta.json").unlink()
    elif damage == "bad_json":
        (d / "meta.json").write_text("{not json")
    elif damage == "other_features":
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps(meta | {"feature_spec": "v0:close:window=30"}))
    else:
        import tensorflow as tf

        wrong = tf.keras.Sequential([tf.keras.Input((30, 2)), tf.keras.layers.LSTM(2), tf.keras.layers.Dense(1)])
        wrong.save(d / "model.keras")
    with pytest.raises(ModelError, match=bad):
        reg.promote(bad)
    assert reg.current_version() == good


def test_gate_refuses_a_model_worse_than_persistence(tmp_path: Path, samples: D.Samples, scaler: Scaler) -> None:
    reg = Registry(tmp_path)
    neutral = reg.save(tiny_model(0.0), scaler, {})  # forecasts no move: exactly persistence
    report, _ = E.build_report(samples, reg.load(neutral))
    assert report["model_rmse"] == report["persistence_rmse"]
    assert E.apply_gate(reg, neutral, report)["promoted"]  # "not worse" passes
    assert reg.current_version() == neutral

    worse = reg.save(tiny_model(3.0), scaler, {})  # always forecasts a +3 sigma move
    report, _ = E.build_report(samples, reg.load(worse), E.load_current(reg))
    assert report["model_rmse"] > report["persistence_rmse"]
    decision = E.apply_gate(reg, worse, report)
    assert not decision["promoted"] and "worse than persistence" in decision["reason"]
    assert reg.current_version() == neutral


def test_gate_refuses_a_model_worse_than_current() -> None:
    report = {"model_rmse": 0.30, "persistence_rmse": 0.31, "current_rmse": 0.29, "current_version": "x"}
    passed, reason = E.gate(report)
    assert not passed and "worse than current" in reason


@pytest.mark.integration
def test_evaluate_cli_json_on_shared_files(tmp_path: Path, shared_data: Path, scaler: Scaler) -> None:
    home = tmp_path / "home"
    reg = Registry(home / "models")
    version = reg.save(tiny_model(0.5), scaler, {})
    reg.promote(version)
    bars = tmp_path / "bars"
    bars.mkdir()
    for f in FILES:
        (bars / f).symlink_to(shared_data / f)
    env = os.environ | {"MINUTECAST_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "minutecast.cli", "evaluate", "--bars", str(bars), "--json"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == version and out["tickers"] == 2 and out["samples"] > 50_000
    assert out["persistence_rmse"] > 0 and out["model_rmse"] > out["persistence_rmse"]  # a constant +0.5 sigma
    assert 0.0 <= out["model_directional_accuracy"] <= 1.0
    assert Path(out["report_dir"], "report.md").exists()
