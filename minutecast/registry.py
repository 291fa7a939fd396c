"""The model registry: versioned model directories and an atomically switched ``CURRENT`` pointer.

Layout under ``root`` (``settings.models_dir`` = ``<home>/models``)::

    CURRENT                      one line: the version serving uses (absent: persistence)
    20261122T031500Z-1a2b3c4d/   one version, never modified after it appears
        model.keras              Keras native format (no pickle; loaded with safe_mode=True)
        meta.json                scaler, config, metrics, data range, Kafka offsets, code version,
                                 feature_spec, created_at, kind

A version directory is written under a hidden temporary name and renamed into place, so a reader
sees either nothing or a complete version. :meth:`Registry.promote` refuses a version that
:meth:`Registry.load` refuses; the promotion *gate* (is it better?) lives in training.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minutecast.errors import ModelError
from minutecast.features import FEATURE_SPEC, N_FEATURES, Scaler, make_inputs, to_price
from minutecast.window import WINDOW

PERSISTENCE = "persistence"  # model_version/kind of forecasts made before any model is promoted
MODEL_FILE = "model.keras"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
KIND = "lstm"
_VERSION_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


def code_version() -> str:
    """``git describe`` of the checkout this runs from, else the package version."""
    import minutecast

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return f"{minutecast.__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return minutecast.__version__


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and Paths -> plain JSON types (for meta.json)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class ServingModel:
    """A loaded, validated model ready for batched inference."""

    version: str
    kind: str
    scaler: Scaler
    meta: dict[str, Any]
    keras_model: Any = field(repr=False)
    _fn: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import tensorflow as tf

        model = self.keras_model
        # One graph for every batch size: (None, 60, 2) float32 -> (None, 1).
        self._fn = tf.function(lambda x: model(x, training=False),
                               input_signature=[tf.TensorSpec([None, WINDOW, N_FEATURES], tf.float32)])

    def predict_prices(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows (N, 60, 2) [close, volume] -> (N,) forecast close in price units."""
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (WINDOW, N_FEATURES):
            raise ModelError(f"windows must have shape (N, {WINDOW}, {N_FEATURES}), got {w.shape}")
        if w.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        out = self._fn(make_inputs(w, self.scaler)).numpy()
        return to_price(out, w[:, -1, 0], self.scaler)


class Registry:
    """Versioned models under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------------------------
    def current_version(self) -> str | None:
        """The promoted version, or None (serve persistence). One small file read."""
        try:
            text = (self.root / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def versions(self) -> list[str]:
        """Complete versions, oldest first (names sort by creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _VERSION_RE.match(p.name) and (p / META_FILE).exists())

    def path(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise ModelError(f"{version!r} is not a model version (expected e.g. 20261122T031500Z-1a2b3c4d)")
        return self.root / version

    def load(self, version: str) -> ServingModel:
        """Load and validate ``version``; anything wrong raises :class:`ModelError` saying what."""
        d = self.path(version)
        if not d.is_dir():
            raise ModelError(f"model {version} not found under {self.root}")
        meta_path, model_path = d / META_FILE, d / MODEL_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"model {version}: {META_FILE} missing") from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {version}: {META_FILE} unreadable ({exc})") from exc
        if not isinstance(meta, dict):
            raise ModelError(f"model {version}: {META_FILE} is not an object")
        if meta.get("feature_spec") != FEATURE_SPEC:
            raise ModelError(f"model {version} was trained for features {meta.get('feature_spec')!r}, "
                             f"this code computes {FEATURE_SPEC!r}: retrain it")
        try:
            scaler = Scaler.from_dict(meta["scaler"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model {version}: scaler in {META_FILE} missing or invalid ({exc})") from exc
        if not all(math.isfinite(v) for v in scaler.to_dict().values()):
            raise ModelError(f"model {version}: scaler has non-finite values")
        if not model_path.is_file():
            raise ModelError(f"model {version}: {MODEL_FILE} missing")
        import tensorflow as tf

        try:
            # safe_mode: no lambdas / arbitrary code; no custom_objects: only built-in layers load.
            keras_model = tf.keras.models.load_model(model_path, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            raise ModelError(f"model {version}: {MODEL_FILE} cannot be loaded ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from exc
        in_shape = tuple(keras_model.input_shape) if not isinstance(keras_model.input_shape, list) else None
        out_shape = tuple(keras_model.output_shape) if not isinstance(keras_model.output_shape, list) else None
        if in_shape != (None, WINDOW, N_FEATURES) or out_shape != (None, 1):
            raise ModelError(f"model {version}: shapes {in_shape} -> {out_shape}, "
                             f"expected (None, {WINDOW}, {N_FEATURES}) -> (None, 1)")
        served = ServingModel(version=version, kind=str(meta.get("kind", KIND)), scaler=scaler, meta=meta,
                              keras_model=keras_model)
        probe = np.stack([np.full(WINDOW, 100.0), np.linspace(1e3, 2e3, WINDOW)], axis=1)[None]  # (1, 60, 2)
        try:
            pred = served.predict_prices(probe)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model {version}: test prediction failed ({exc})") from exc
        if pred.shape != (1,) or not np.isfinite(pred).all():
            raise ModelError(f"model {version}: test prediction is not one finite number ({pred})")
        return served

    # -- writing -----------------------------------------------------------------------------------
    def save(self, model: Any, scaler: Scaler, meta: dict[str, Any]) -> str:
        """Write a new version (model + meta with scaler, feature_spec, code version, created_at)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            model.save(tmp / MODEL_FILE)
            digest = hashlib.sha256((tmp / MODEL_FILE).read_bytes()).hexdigest()[:8]
            now = time.time()
            version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + digest
            full = dict(meta) | {
                "version": version,
                "kind": KIND,
                "scaler": scaler.to_dict(),
                "feature_spec": FEATURE_SPEC,
                "code_version": meta.get("code_version") or code_version(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            }
            with open(tmp / META_FILE, "w") as fh:
                json.dump(_jsonable(full), fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o755)  # noqa: S103 - mkdtemp makes 0700; serving may run as another user (read only)
            final = self.root / version
            if final.exists():
                raise ModelError(f"model {version} already exists")
            os.rename(tmp, final)
            return version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def promote(self, version: str) -> None:
        """Validate ``version`` with :meth:`load`, then point CURRENT at it atomically."""
        self.load(version)
        tmp = self.root / f".CURRENT.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT_FILE)
