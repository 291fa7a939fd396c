"""The model registry: versioned model directories and an atomically switched ``CURRENT`` pointer.

Layout under ``root`` (``settings.models_dir`` = ``<home>/models``)::

    CURRENT                      one line: the version serving uses (absent: persistence)
    20261122T031500Z-1a2b3c4d/   one version, never modified after it appears
        model.keras              Keras native format (a zip archive; no pickle; loaded with safe_mode=True)
        meta.json                scaler, config, metrics, data range, Kafka offsets, code version,
                                 feature_spec, created_at, kind, model_sha256 (of model.keras)

Loading is guarded because Keras applies ``safe_mode`` only to genuine zip archives (anything else goes
to the legacy loaders, where a Lambda layer's marshalled bytecode runs): :meth:`Registry.load` reads the
archive once, checks its sha256 against ``meta.json``, requires a zip holding exactly the Keras v3
members, checks every ``class_name`` in its ``config.json`` against :data:`ALLOWED_CLASSES` (built-in
layers and initializers that run no user code; no ``Lambda``, no ``TFOpLambda``, no custom objects),
and only then deserialises those verified bytes (from a private copy, so the file cannot change between
check and load).

A version directory is written under a hidden temporary name, fsynced (files, then the directory), renamed
into place and the parent fsynced, so a reader, even after a power loss, sees either nothing or a complete
version; ``CURRENT`` switches the same way, only to a version already durable. A write that fails (a full
disk) raises :class:`ModelError` and leaves the serving version as it was. :meth:`Registry.save` keeps the
newest ``keep`` versions (and always the current one), removing older ones. :meth:`Registry.promote` refuses
a version that :meth:`Registry.load` refuses; the promotion *gate* (is it better?) lives in training.
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
from pathlib import Path
from typing import Any

import numpy as np

import minutecast
from minutecast.errors import ModelError
from minutecast.features import FEATURE_SPEC, N_FEATURES, Scaler
from minutecast.har import Har
from minutecast.modelcheck import MAX_META_BYTES, MAX_MODEL_BYTES, check_archive, parse_meta, read_capped
from minutecast.serving_model import N_OUTPUTS, ServingModel
from minutecast.window import WINDOW, slots, with_market

PERSISTENCE = "persistence"  # model_version/kind of forecasts made before any model is promoted
MODEL_FILE = "model.keras"
META_FILE = "meta.json"
CURRENT_FILE = "CURRENT"
KEEP_VERSIONS = 10  # versions kept by save(): the newest ten (about 1 MB each) and always CURRENT
BASELINE_FILE = "BASELINE.json"  # the baselines fitted by the newest training run: window-vol (c80, c90), HAR
KIND = "lstm"
_VERSION_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")


def _fsync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its entries, e.g. a rename, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def code_version() -> str:
    """``git describe`` of the checkout this runs from, else the package version."""

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


def probe_window() -> np.ndarray:
    """A plausible raw window (WINDOW, N_COLUMNS): a model must give finite outputs on it to load."""

    minutes = 1_759_325_400 + 60 * np.arange(WINDOW + 1)  # 2025-10-01 09:30 New York onwards
    close = 100.0 + 0.01 * np.sin(np.arange(WINDOW + 1))
    ohlcv = np.stack([close, close + 0.02, close - 0.02, close, np.full(WINDOW + 1, 1e4)], axis=1)
    s = slots(minutes, ohlcv)
    return with_market(s.windows(s.ready()[-1:]), s)[0]


class Registry:
    """Versioned models under ``root``; see the module docstring for the layout."""

    def __init__(self, root: Path, keep: int = KEEP_VERSIONS) -> None:
        self.root = Path(root)
        self.keep = keep  # versions save() keeps (CURRENT always stays)

    # -- reading -----------------------------------------------------------------------------------
    def current_version(self) -> str | None:
        """The promoted version, or None (serve persistence). One small file read."""
        try:
            text = (self.root / CURRENT_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def current_fits_this_code(self) -> bool:
        """Whether a version is promoted and its meta is one this code serves (the features it was trained for,
        its scaler, its checksum recorded; no TensorFlow). False after an upgrade that changed the features: the
        promoted model is refused when loaded, so the trainer treats it as no model (``first_preset``)."""
        version = self.current_version()
        if version is None:
            return False
        try:
            self.read_meta(version)
        except ModelError:
            return False
        return True

    def read_meta(self, version: str) -> tuple[dict[str, Any], Scaler]:
        """``version``'s checked meta and scaler (:func:`minutecast.modelcheck.parse_meta`; no TensorFlow);
        anything missing or wrong raises :class:`ModelError` saying what."""
        return parse_meta(version, self._read(version, META_FILE, MAX_META_BYTES))

    def _read(self, version: str, name: str, limit: int) -> bytes:
        """The bytes of ``version``'s file ``name`` (at most ``limit``); ModelError when missing or unreadable."""
        try:
            return read_capped(self.path(version) / name, limit)
        except FileNotFoundError as exc:
            raise ModelError(f"model {version}: {name} missing") from exc
        except OSError as exc:
            raise ModelError(f"model {version}: {name} unreadable ({exc})") from exc

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
        meta, scaler = self.read_meta(version)
        data = self._read(version, MODEL_FILE, MAX_MODEL_BYTES)
        check_archive(version, data, meta.get("model_sha256"))
        import tensorflow as tf

        with tempfile.TemporaryDirectory(prefix="minutecast-model-") as tmp:
            verified = Path(tmp) / MODEL_FILE  # the checked bytes: the registry file may change meanwhile
            verified.write_bytes(data)
            try:
                # safe_mode: no lambdas / arbitrary code; no custom_objects: only built-in layers load.
                keras_model = tf.keras.models.load_model(verified, compile=False, safe_mode=True)
            except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
                raise ModelError(f"model {version}: {MODEL_FILE} cannot be loaded ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from exc
        in_shape = tuple(keras_model.input_shape) if not isinstance(keras_model.input_shape, list) else None
        out_shape = tuple(keras_model.output_shape) if not isinstance(keras_model.output_shape, list) else None
        if in_shape != (None, WINDOW, N_FEATURES) or out_shape != (None, N_OUTPUTS):
            raise ModelError(f"model {version}: shapes {in_shape} -> {out_shape}, "
                             f"expected (None, {WINDOW}, {N_FEATURES}) -> (None, {N_OUTPUTS})")
        try:
            served = ServingModel(version=version, kind=str(meta.get("kind", KIND))[:32], scaler=scaler, meta=meta,
                                  keras_model=keras_model)  # refuses malformed bucket_scales, har_weight, har
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - bucket_scales or har of the wrong type or shape
            raise ModelError(f"model {version}: bucket_scales or har in {META_FILE} invalid "
                             f"({str(exc)[:120]})") from exc
        try:
            pred = served.predict_log_quantiles(probe_window()[None])
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model {version}: test prediction failed ({exc})") from exc
        if pred.shape != (1, N_OUTPUTS) or not np.isfinite(pred).all():
            raise ModelError(f"model {version}: test prediction is not {N_OUTPUTS} finite numbers ({pred})")
        return served

    def baseline_scale(self) -> tuple[float, float]:
        """(c80, c90) of the calibrated window-vol baseline from the newest training run; (1, 1) = naive."""
        try:
            d = json.loads((self.root / BASELINE_FILE).read_text())
            c80, c90 = float(d["c80"]), float(d["c90"])
        except (OSError, ValueError, KeyError, TypeError):
            return 1.0, 1.0
        return (c80, c90) if all(math.isfinite(c) and 0 < c < 100 for c in (c80, c90)) else (1.0, 1.0)

    def har(self) -> Har | None:
        """The HAR-style baseline fitted by the newest training run (:mod:`minutecast.har`); None when there is
        none or it was fitted to another specification (then it must be refitted: the evaluate CLI does)."""
        try:
            return Har.from_dict(json.loads((self.root / BASELINE_FILE).read_text())["har"])
        except (OSError, ValueError, KeyError, TypeError, ModelError):
            return None

    def save_baseline_scale(self, scale: tuple[float, float], meta: dict[str, Any], har: Har | None = None) -> None:
        """Write :data:`BASELINE_FILE` atomically (training, on the training dates): the window-vol baseline's
        scale and the HAR baseline's fit."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{BASELINE_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            doc = {"c80": scale[0], "c90": scale[1], **meta} | ({"har": har.to_dict()} if har is not None else {})
            json.dump(_jsonable(doc), fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / BASELINE_FILE)

    # -- writing -----------------------------------------------------------------------------------
    def save(self, model: Any, scaler: Scaler, meta: dict[str, Any]) -> str:
        """Write a new version (model + meta with scaler, feature_spec, code version, created_at)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            import tensorflow as tf

            # The architecture and weights only: a compiled model's config names its optimizer and loss (a loss
            # is a function, i.e. code), which the loader's class allowlist rightly refuses.
            plain = tf.keras.models.clone_model(model)
            plain.set_weights(model.get_weights())
            plain.save(tmp / MODEL_FILE)
            sha256 = hashlib.sha256((tmp / MODEL_FILE).read_bytes()).hexdigest()
            digest = sha256[:8]
            now = time.time()
            version = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + digest
            full = dict(meta) | {
                "version": version,
                "kind": KIND,
                "scaler": scaler.to_dict(),
                "feature_spec": FEATURE_SPEC,
                "code_version": meta.get("code_version") or code_version(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "model_sha256": sha256,  # checked by load(): a changed archive is refused
            }
            with open(tmp / META_FILE, "w") as fh:
                json.dump(_jsonable(full), fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o755)  # noqa: S103 - mkdtemp makes 0700; serving may run as another user (read only)
            _fsync(tmp / MODEL_FILE)
            _fsync(tmp)  # the directory's entries, before the rename makes them visible
            final = self.root / version
            if final.exists():
                raise ModelError(f"model {version} already exists")
            os.rename(tmp, final)
            _fsync(self.root)  # the rename itself
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"could not write a model version under {self.root} ({exc}); "
                             f"the serving model ({self.current_version() or 'persistence'}) stays") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()
        return version

    def prune(self) -> list[str]:
        """Remove all but the newest ``keep`` versions, never CURRENT, and stale temporary directories of
        writers that died (older than an hour). Returns the versions removed."""
        current = self.current_version()
        old = [v for v in self.versions()[:-self.keep or None] if v != current] if self.keep > 0 else []
        for v in old:
            shutil.rmtree(self.root / v, ignore_errors=True)
        for stale in self.root.glob(".tmp-*"):
            if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        return old

    def promote(self, version: str) -> None:
        """Validate ``version`` with :meth:`load`, then point CURRENT at it atomically."""
        self.load(version)
        tmp = self.root / f".CURRENT.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(version + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / CURRENT_FILE)
            _fsync(self.root)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ModelError(f"could not switch CURRENT to {version} ({exc}); "
                             f"the serving model ({self.current_version() or 'persistence'}) stays") from exc
