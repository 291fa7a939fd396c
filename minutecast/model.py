"""Keras model presets: the network that maps a normalised window to quantiles of the 5-minute log move.

Input ``(None, WINDOW, N_FEATURES)`` = ``(None, 60, 13)`` float32 from :func:`minutecast.features.make_inputs`;
output ``(None, 5)``: the quantiles :data:`minutecast.schemas.QUANTILES` of ``log(close_{t+5}/close_t)`` divided
by ``Scaler.target_scale`` (:func:`minutecast.features.to_log_moves` turns them back). Column 2 is the median,
the point forecast; a median of 0 is persistence.

Heads (``Preset.head``), both built from plain Keras layers (no Lambda: models load with ``safe_mode``):

* ``"quantile"``: median + non-negative increments (softplus) above and below it, so quantiles never cross;
  trained with the pinball loss summed over the five levels (= the interval scores of the 80% and 90%
  intervals plus the median's absolute error).
* ``"gaussian"``: location and log-scale; the quantiles are ``mu + sigma * z``; trained by Gaussian likelihood.

The LSTM's final state is joined by window summaries (mean of every feature over the whole window and over
its last 15 slots, and the last slot itself): volatility clusters, so those carry most of the spread.

Every recurrent layer keeps the cuDNN conditions (activation tanh, recurrent activation sigmoid,
``recurrent_dropout=0``, ``unroll=False``, bias on) so the same model runs the fused cuDNN kernel on a GPU.
TensorFlow is imported inside :func:`build_model` only: importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from minutecast.errors import ConfigError
from minutecast.features import N_FEATURES
from minutecast.intervals import Z
from minutecast.schemas import QUANTILES
from minutecast.window import WINDOW

RECENT = 15  # slots of the "recent" window summary


@dataclass(frozen=True)
class Preset:
    """One architecture plus the training defaults it was tuned with (train.py may override those)."""

    name: str
    lstm_units: tuple[int, ...]  # stacked LSTM layer widths; the last returns only its final state
    dropout: float  # Dropout layer after the LSTM stack (0 = none)
    dense_units: int  # hidden Dense(relu) layer on [LSTM state, window summaries]
    head: str  # "quantile" (pinball loss) or "gaussian" (likelihood); see the module docstring
    # Shrink the median's move toward persistence by the least-squares factor a in [0, 1] fitted on the validation
    # samples (median layer weights x a): a weak point signal is scaled down instead of over-traded.
    calibrate: bool
    batch_size: int  # samples per step PER RANK
    learning_rate: float  # Adam LR for one rank; train.py multiplies it by hvd.size()
    epochs: int  # default number of passes over the training samples
    patience: int  # epochs without a better validation loss before stopping early
    max_samples: int | None  # default cap on training samples (all ranks together); None: all

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lstm_units"] = list(self.lstm_units)
        return d


PRESETS: dict[str, Preset] = {
    # The default: a narrow LSTM plus window summaries and the quantile head (chosen over "gaussian" by the
    # validation interval score; see the README's Model quality section).
    "default": Preset(name="default", lstm_units=(32,), dropout=0.1, dense_units=32, head="quantile", calibrate=True,
                      batch_size=512, learning_rate=1e-3, epochs=6, patience=2, max_samples=400_000),
    # The same network with the location-scale head, kept to compare the two by measurement.
    "gaussian": Preset(name="gaussian", lstm_units=(32,), dropout=0.1, dense_units=32, head="gaussian",
                       calibrate=True, batch_size=512, learning_rate=1e-3, epochs=6, patience=2, max_samples=400_000),
    # make run's first model: the default network on fewer samples and epochs (minutes on 2 CPU cores).
    "first": Preset(name="first", lstm_units=(32,), dropout=0.1, dense_units=32, head="quantile", calibrate=True,
                    batch_size=512, learning_rate=1e-3, epochs=3, patience=1, max_samples=150_000),
    # Tests and CI on CPU: seconds per epoch on a few thousand samples.
    "tiny": Preset(name="tiny", lstm_units=(8,), dropout=0.0, dense_units=8, head="quantile", calibrate=False,
                   batch_size=128, learning_rate=3e-3, epochs=1, patience=1, max_samples=None),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A preset by name, with non-None overrides applied (e.g. ``epochs=3``)."""

    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def build_model(preset: Preset, seed: int = 0) -> Any:
    """A fresh, uncompiled ``tf.keras.Model``: (None, WINDOW, N_FEATURES) float32 -> (None, 5)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)  # same initial weights on every rank (rank 0's are broadcast anyway)
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=(WINDOW, N_FEATURES), dtype="float32", name="window")
    x = inputs
    for i, units in enumerate(preset.lstm_units):
        last = i == len(preset.lstm_units) - 1
        # cuDNN conditions: tanh / sigmoid, recurrent_dropout=0, unroll=False, use_bias=True.
        x = layers.LSTM(units, activation="tanh", recurrent_activation="sigmoid", recurrent_dropout=0.0,
                        unroll=False, use_bias=True, return_sequences=not last, name=f"lstm{i}")(x)
    if preset.dropout > 0:
        x = layers.Dropout(preset.dropout, name="dropout")(x)
    whole = layers.GlobalAveragePooling1D(name="mean_all")(inputs)
    recent = layers.GlobalAveragePooling1D(name="mean_recent")(layers.Cropping1D((WINDOW - RECENT, 0))(inputs))
    last_slot = layers.Flatten(name="last_slot")(layers.Cropping1D((WINDOW - 1, 0))(inputs))
    z = layers.Concatenate(name="summary")([x, whole, recent, last_slot])
    z = layers.Dense(preset.dense_units, activation="relu", name="hidden")(z)
    # The median starts at zero (= persistence) and moves only where the data says so.
    median = layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros", name="median")(z)
    if preset.head == "quantile":
        def step(name: str) -> Any:  # a positive gap between neighbouring quantiles, ~0.5 target units at start
            return layers.Dense(1, activation="softplus", bias_initializer=tf.keras.initializers.Constant(-0.4),
                                name=name)(z)
        q90 = layers.Add(name="q90")([median, step("up80")])
        q95 = layers.Add(name="q95")([q90, step("up90")])
        q10 = layers.Subtract(name="q10")([median, step("down80")])
        q05 = layers.Subtract(name="q05")([q10, step("down90")])
        outputs = layers.Concatenate(name="quantiles")([q05, q10, median, q90, q95])
    elif preset.head == "gaussian":
        sigma = layers.Dense(1, activation="exponential", name="sigma")(z)
        # mu + sigma * z for the five levels, as two fixed (non-trainable) linear maps (1 -> 5).
        spread = layers.Dense(len(QUANTILES), use_bias=False, trainable=False, name="z",
                              kernel_initializer=tf.keras.initializers.Constant(Z.reshape(1, -1).tolist()))(sigma)
        centre = layers.Dense(len(QUANTILES), use_bias=False, trainable=False, name="broadcast",
                              kernel_initializer=tf.keras.initializers.Constant([[1.0] * len(QUANTILES)]))(median)
        outputs = layers.Add(name="quantiles")([centre, spread])
    else:
        raise ConfigError(f"unknown head {preset.head!r} (quantile or gaussian)")
    return tf.keras.Model(inputs, outputs, name=f"minutecast_{preset.name}")


def make_loss(preset: Preset) -> Any:
    """Pinball loss over the five quantiles (quantile head) or the Gaussian negative log-likelihood."""
    import tensorflow as tf

    levels = tf.constant(QUANTILES, dtype=tf.float32)

    def pinball(y_true: Any, y_pred: Any) -> Any:
        err = tf.reshape(y_true, (-1, 1)) - y_pred  # (B, 5)
        return tf.reduce_sum(tf.maximum(levels * err, (levels - 1.0) * err), axis=-1)

    def gaussian_nll(y_true: Any, y_pred: Any) -> Any:
        mu = y_pred[:, 2]
        sigma = tf.maximum((y_pred[:, 3] - y_pred[:, 1]) / (2 * 1.2815515655446004), 1e-4)
        y = tf.reshape(y_true, (-1,))
        return tf.math.log(sigma) + 0.5 * tf.square((y - mu) / sigma)

    return pinball if preset.head == "quantile" else gaussian_nll
