"""Model-file safety checks for :class:`minutecast.registry.Registry` (run before anything is deserialised).

Keras applies ``safe_mode`` only to genuine ``.keras`` zip archives: an HDF5 or SavedModel file named
``model.keras`` goes to the legacy loaders, where a Lambda layer's marshalled bytecode runs. So a model is
loaded only when (1) its bytes match the ``model_sha256`` recorded in ``meta.json`` at save time, (2) they
are a zip archive holding exactly the Keras v3 members, (3) every ``class_name`` in its ``config.json`` is
in :data:`ALLOWED_CLASSES`, every ``module`` a ``keras`` one and no object is a registered custom one.
Everything here raises only :class:`minutecast.errors.ModelError` (fuzzed: ``tests/test_decoders_fuzz.py``).
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from pathlib import Path
from typing import Any

from minutecast import decoding
from minutecast.errors import ModelError, Rejected
from minutecast.features import FEATURE_SPEC, Scaler

MAX_META_BYTES = 4 << 20  # meta.json is a few kB
MAX_MODEL_BYTES = 512 << 20  # model.keras of the largest preset is a few MB
ARCHIVE_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})  # Keras v3 .keras archive
# Classes a model's config.json may name: the layers minutecast/model.py builds, neighbours a preset might
# use, and the built-in initializers/regularizers/constraints. None runs code named by the file.
ALLOWED_CLASSES = frozenset({
    "Functional", "Model", "Sequential", "InputLayer",
    "LSTM", "LSTMCell", "GRU", "GRUCell", "Bidirectional", "TimeDistributed", "Dense", "Dropout",
    "SpatialDropout1D", "GaussianNoise", "Activation", "Softmax", "ReLU", "LayerNormalization",
    "BatchNormalization", "Masking", "Reshape", "Permute", "Flatten", "RepeatVector", "Cropping1D",
    "ZeroPadding1D", "Conv1D", "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D",
    "GlobalMaxPooling1D", "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform", "Orthogonal",
    "Zeros", "Ones", "Constant", "Identity", "RandomNormal", "RandomUniform", "TruncatedNormal",
    "VarianceScaling", "L1", "L2", "L1L2", "MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm", "Policy",
})
MAX_CONFIG_BYTES = 4 << 20  # config.json of our models is ~10 kB
MAX_ARCHIVE_BYTES = 1 << 30  # uncompressed total: refuses zip bombs


def read_capped(path: Path, limit: int) -> bytes:
    """The file's bytes, or :class:`ModelError` when it is larger than ``limit`` (OSError propagates)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ModelError(f"{path.name} is larger than {limit} bytes")
    return data


def parse_meta(version: str, raw: bytes) -> tuple[dict[str, Any], Scaler]:
    """``meta.json`` bytes -> (meta, scaler); any defect raises :class:`ModelError` saying what."""
    try:
        meta = decoding.obj(decoding.loads(raw, MAX_META_BYTES), "meta.json")
    except Rejected as exc:
        raise ModelError(f"model {version}: meta.json unreadable ({exc})") from exc
    if meta.get("feature_spec") != FEATURE_SPEC:
        raise ModelError(f"model {version} was trained for features {str(meta.get('feature_spec'))[:80]!r}, "
                         f"this code computes {FEATURE_SPEC!r}: retrain it")
    try:
        scaler = Scaler.from_dict(meta["scaler"])
        finite = all(math.isfinite(float(v)) for v in scaler.to_dict().values())
    except Exception as exc:  # noqa: BLE001 - any defect of the stored dict is the same refusal
        raise ModelError(f"model {version}: scaler in meta.json missing or invalid ({str(exc)[:120]})") from exc
    if not finite:
        raise ModelError(f"model {version}: scaler has non-finite values")
    sha = meta.get("model_sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError(f"model {version}: meta.json has no model_sha256 (saved before archives were "
                         "checksummed, or edited): retrain it")
    return meta, scaler


def _classes(node: Any, out: list[tuple[str, Any, Any]]) -> None:
    """Every (class_name, module, registered_name) in a Keras config tree (depth bounded by the caller)."""
    if isinstance(node, dict):
        if "class_name" in node:
            out.append((node["class_name"], node.get("module"), node.get("registered_name")))
        for v in node.values():
            _classes(v, out)
    elif isinstance(node, list):
        for v in node:
            _classes(v, out)


def check_archive(version: str, data: bytes, sha256: str | None) -> None:
    """Refuse (:class:`ModelError`) model bytes that are not the recorded, genuine, allowlisted archive."""
    if sha256 is None or hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError(f"model {version}: model.keras does not match the model_sha256 in meta.json "
                         "(tampered with or corrupt): refused")
    buf = io.BytesIO(data)
    if not zipfile.is_zipfile(buf):
        raise ModelError(f"model {version}: model.keras is not a Keras zip archive (HDF5 or another legacy "
                         "format, whose loader runs code): refused")
    try:
        with zipfile.ZipFile(buf) as zf:
            infos = zf.infolist()
            names = {i.filename for i in infos}
            if names != ARCHIVE_MEMBERS or len(infos) != len(ARCHIVE_MEMBERS):
                raise ModelError(f"model {version}: archive members {sorted(names)[:8]} are not exactly "
                                 f"{sorted(ARCHIVE_MEMBERS)}: refused")
            if sum(i.file_size for i in infos) > MAX_ARCHIVE_BYTES:
                raise ModelError(f"model {version}: archive expands past {MAX_ARCHIVE_BYTES} bytes: refused")
            if zf.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise ModelError(f"model {version}: config.json is larger than {MAX_CONFIG_BYTES} bytes")
            config_raw = zf.read("config.json")
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile, ValueError, NotImplementedError, ...
        raise ModelError(f"model {version}: model.keras is a damaged archive ({type(exc).__name__})") from exc
    try:
        config = decoding.loads(config_raw, MAX_CONFIG_BYTES)
    except Rejected as exc:
        raise ModelError(f"model {version}: config.json unreadable ({exc})") from exc
    found: list[tuple[str, Any, Any]] = []
    _classes(config, found)
    if not found:
        raise ModelError(f"model {version}: config.json names no model class: refused")
    bad = sorted({str(c)[:40] for c, m, r in found
                  if not isinstance(c, str) or c not in ALLOWED_CLASSES
                  or (m is not None and not (isinstance(m, str) and (m == "keras" or m.startswith("keras."))))
                  or r not in (None, c)})
    if bad:
        raise ModelError(f"model {version}: config.json names classes outside the allowlist {bad[:6]} "
                         "(e.g. Lambda runs arbitrary code): refused")
