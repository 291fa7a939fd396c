"""Registry (save / load / promote, refusal of corrupt models), the baseline scale, the scaler statistics and
`minutecast evaluate --json` on real recorded bars. Models are the tiny preset; paths are tmp dirs. The
promotion gate's decisions are tested in tests/test_gate.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from minutecast import har as HAR
from minutecast.errors import ModelError
from minutecast.features import FEATURE_SPEC, N_FEATURES, Scaler
from minutecast.model import PRESETS, build_model, get_preset
from minutecast.registry import Registry
from minutecast.window import MINUTE, N_COLUMNS, WINDOW, C, regular_hours
from training import data as D

pytestmark = pytest.mark.tensorflow  # builds, saves and loads Keras models

FILES = ("AAPL.csv.gz", "SPY.csv.gz")


@pytest.fixture(scope="module")
def samples(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> D.Samples:
    """Two tickers' first 8 trading dates of real bars (SPY is also the market context)."""
    d = tmp_path_factory.mktemp("bars")
    for f in FILES:
        (d / f).symlink_to(shared_data / f)
    s = D.build_samples(D.load_bars(d), "SPY")
    days = s.days
    return s.take(np.flatnonzero(days < np.unique(days)[8]))


@pytest.fixture(scope="module")
def scaler(samples: D.Samples) -> Scaler:
    return Scaler.fit(samples.windows, samples.targets)


def tiny_model(move_bias: float = 0.0):
    """The tiny preset; its median starts at 0 (persistence); ``move_bias`` shifts every quantile's move."""
    model = build_model(get_preset("tiny"))
    model.get_layer("median").bias.assign([move_bias])
    return model


def test_scaler_from_allreduced_stats_matches_fit(samples: D.Samples) -> None:
    halves = [samples.take(np.arange(0, len(samples), 2)), samples.take(np.arange(1, len(samples), 2))]
    summed = sum(Scaler.stats(h.windows, h.targets) for h in halves)  # what the Horovod allreduce computes
    fitted = Scaler.fit(samples.windows, samples.targets).to_dict()
    for k, v in Scaler.from_stats(summed).to_dict().items():
        assert v == pytest.approx(fitted[k], rel=1e-6), k
    assert all(v > 0 for k, v in fitted.items() if k != "logvol_mean")


def test_split_is_by_date_and_keeps_order(samples: D.Samples) -> None:
    cuts = D.split_days(samples.days.tolist(), 0.15, 0.15)
    val_start, test_start = cuts
    days = samples.days
    n = [(days < val_start).sum(), ((days >= val_start) & (days < test_start)).sum(), (days >= test_start).sum()]
    assert sum(n) == len(samples) and min(n) > 0
    assert np.isfinite(samples.targets).all()


def test_save_load_promote_roundtrip(tmp_path: Path, samples: D.Samples, scaler: Scaler) -> None:
    reg = Registry(tmp_path)
    assert reg.current_version() is None and reg.versions() == []
    version = reg.save(tiny_model(), scaler, {"config": {"preset": "tiny"}, "data": {"end_offsets": {"0": 5}}})
    assert reg.versions() == [version] and reg.current_version() is None
    served = reg.load(version)
    assert served.kind == "lstm" and served.scaler == scaler and served.meta["feature_spec"] == FEATURE_SPEC
    assert served.predict_log_quantiles(np.empty((0, WINDOW, N_COLUMNS))).shape == (0, 5)
    q = served.predict_log_quantiles(samples.windows[:100])
    assert q.shape == (100, 5) and np.isfinite(q).all()
    assert np.all(np.diff(q, axis=1) >= 0)  # quantiles never cross
    np.testing.assert_array_equal(q[:, 2], 0.0)  # zero median = persistence, exactly
    assert np.all(q[:, 1] < 0) and np.all(q[:, 3] > 0)  # a real interval around it
    reg.promote(version)
    assert reg.current_version() == version
    assert samples.windows[0, -1, C] > 0


def test_a_model_with_a_har_weight_serves_the_average_with_the_har_baseline(tmp_path: Path, samples: D.Samples,
                                                                          scaler: Scaler) -> None:
    reg, model = Registry(tmp_path), tiny_model()
    har = HAR.fit([(samples.windows, samples.targets)])
    alone = reg.load(reg.save(model, scaler, {}))
    blended = reg.load(reg.save(model, scaler, {"har": har.to_dict(), "har_weight": 0.4}))
    w = samples.windows[::50]
    regular = regular_hours(w[:, -1, MINUTE].astype(np.int64))
    assert regular.any() and not regular.all()
    got = blended.predict_log_quantiles(w)
    np.testing.assert_allclose(got, HAR.blend(alone.predict_log_quantiles(w), har.log_quantiles(w), 0.4, regular))
    assert not np.allclose(got[regular], alone.predict_log_quantiles(w)[regular])
    for bad in ({"har_weight": 1.5, "har": har.to_dict()}, {"har_weight": 0.5}, {"har_weight": "half"}):
        with pytest.raises(ModelError, match="(?i)har"):
            reg.load(reg.save(model, scaler, bad))


def test_baseline_scale_round_trip_and_refusals(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.baseline_scale() == (1.0, 1.0)  # none yet: the naive interval
    reg.save_baseline_scale((0.93, 0.97), {"run_id": "x"})
    assert reg.baseline_scale() == (0.93, 0.97)
    (tmp_path / "BASELINE.json").write_text('{"c80": "nan", "c90": 1}')
    assert reg.baseline_scale() == (1.0, 1.0)


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

        wrong = tf.keras.Sequential([tf.keras.Input((30, 2)), tf.keras.layers.LSTM(2), tf.keras.layers.Dense(5)])
        wrong.save(d / "model.keras")
        rehash(d)  # a genuine, recorded archive: the shape check is what refuses it
    with pytest.raises(ModelError, match=bad) as info:
        reg.promote(bad)
    if damage == "wrong_shape":
        assert "shapes" in str(info.value)
    assert reg.current_version() == good


def rehash(d: Path) -> None:
    """Record the version's current model.keras in its meta.json (what an attacker with write access to
    the models volume would also do), so the check under test is not the sha256 one."""
    meta = json.loads((d / "meta.json").read_text())
    meta["model_sha256"] = hashlib.sha256((d / "model.keras").read_bytes()).hexdigest()
    (d / "meta.json").write_text(json.dumps(meta))


def _evil_model(marker: Path):
    """A model with a Lambda layer whose code creates ``marker`` when it runs."""
    import tensorflow as tf

    def evil(t, path=str(marker)):  # noqa: ANN001, ANN202 - Keras marshals this function's code and defaults
        import pathlib  # noqa: PLC0415 - the marshalled code runs without this module's globals

        pathlib.Path(path).touch()
        return t

    inputs = tf.keras.Input((WINDOW, N_FEATURES))
    x = tf.keras.layers.LSTM(2)(tf.keras.layers.Lambda(evil)(inputs))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(5)(x))
    marker.unlink()  # building the model called it once
    return model


def test_hdf5_model_with_a_lambda_is_refused_and_its_code_never_runs(tmp_path: Path, scaler: Scaler) -> None:
    import tensorflow as tf

    reg = Registry(tmp_path / "models")
    version = reg.save(tiny_model(), scaler, {})
    d = reg.path(version)
    marker = tmp_path / "lambda-ran"
    _evil_model(marker).save(tmp_path / "evil.h5")  # the legacy HDF5 format: the Lambda's bytecode inside
    (d / "model.keras").write_bytes((tmp_path / "evil.h5").read_bytes())
    rehash(d)
    with pytest.raises(ModelError, match="not a Keras zip archive"):
        reg.load(version)
    with pytest.raises(ModelError):
        reg.promote(version)
    assert not marker.exists(), "the Lambda's code ran"
    assert reg.current_version() is None
    # What the check prevents: Keras itself, safe_mode=True notwithstanding, runs the code of this file.
    tf.keras.models.load_model(d / "model.keras", compile=False, safe_mode=True)
    assert marker.exists()


def test_tampered_archive_is_refused_by_its_sha256(tmp_path: Path, scaler: Scaler) -> None:
    reg = Registry(tmp_path)
    good, other = reg.save(tiny_model(), scaler, {}), reg.save(tiny_model(0.3), scaler, {})
    reg.promote(good)
    # A genuine, loadable archive (another version's), swapped in without updating meta.json.
    (tmp_path / good / "model.keras").write_bytes((tmp_path / other / "model.keras").read_bytes())
    with pytest.raises(ModelError, match="model_sha256"):
        reg.load(good)
    meta = json.loads((tmp_path / other / "meta.json").read_text())
    assert len(meta["model_sha256"]) == 64 and reg.load(other).version == other
    del meta["model_sha256"]  # a meta.json without the checksum is refused too
    (tmp_path / other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model_sha256"):
        reg.load(other)


@pytest.mark.parametrize("what", ["lambda", "tf_op", "extra_member"])
def test_zip_archive_naming_a_class_outside_the_allowlist_is_refused(tmp_path: Path, scaler: Scaler,
                                                                    what: str) -> None:
    import tensorflow as tf

    reg = Registry(tmp_path)
    version = reg.save(tiny_model(), scaler, {})
    d = reg.path(version)
    marker = tmp_path / "lambda-ran"
    if what == "lambda":
        _evil_model(marker).save(d / "model.keras")  # Keras v3 zip format, config names "Lambda"
        match = "allowlist"
    elif what == "tf_op":
        inputs = tf.keras.Input((WINDOW, N_FEATURES))
        x = tf.keras.layers.LSTM(2)(tf.math.multiply(inputs, 2.0))  # a raw TF op: a TFOpLambda layer
        tf.keras.Model(inputs, tf.keras.layers.Dense(5)(x)).save(d / "model.keras")
        match = "allowlist"
    else:
        with zipfile.ZipFile(d / "model.keras", "a") as zf:
            zf.writestr("assets/run.py", "print('hi')")
        match = "members"
    rehash(d)
    with pytest.raises(ModelError, match=match):
        reg.load(version)
    assert not marker.exists()


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
    assert out["version"] == version and out["tickers"] == 2 and out["samples"] > 5_000  # the test dates
    assert out["persistence_rmse"] > 0 and out["model_rmse"] > out["persistence_rmse"]  # a constant +0.5 sigma
    assert 0.0 <= out["model_directional_accuracy"] <= 1.0
    for key in ("coverage_80", "coverage_90", "interval_score_80", "baseline_interval_score_80", "dm_pvalue",
                "ready_share_regular_hours"):
        assert isinstance(out[key], float), key
    assert 0.0 <= out["dm_pvalue"] <= 1.0 and 0.0 < out["coverage_80"] < out["coverage_90"] <= 1.0
    assert Path(out["report_dir"], "report.md").exists()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_saves_and_loads_through_the_registry(tmp_path: Path, scaler: Scaler, preset: str) -> None:
    """The registry refuses a config naming classes outside its allowlist; a preset whose layers serialise a numpy
    array (a Constant initializer given one: ``__numpy__``) could be trained and saved but never served."""
    reg = Registry(tmp_path)
    served = reg.load(reg.save(build_model(get_preset(preset)), scaler, {}))
    assert served.predict_log_quantiles(np.zeros((0, WINDOW, N_COLUMNS))).shape == (0, 5)
