"""Keras model presets: the network that maps a normalised window to the scaled 5-minute move.

Input ``(None, WINDOW, N_FEATURES)`` = ``(None, 60, 2)`` float32 from :func:`minutecast.features.make_inputs`;
output ``(None, 1)``: the relative move ``close_{t+5}/close_t - 1`` divided by ``Scaler.target_scale``
(:func:`minutecast.features.to_price` turns it into a price). An output of 0 is the persistence forecast.

Every recurrent layer keeps the cuDNN conditions (activation tanh, recurrent activation sigmoid,
``recurrent_dropout=0``, ``unroll=False``, bias on) so the same model runs the fused cuDNN kernel on a GPU.
Dropout is a separate layer between blocks, never inside the LSTM.

TensorFlow is imported inside :func:`build_model` only: importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from minutecast.features import N_FEATURES
from minutecast.window import WINDOW


@dataclass(frozen=True)
class Preset:
    """One architecture plus the training defaults it was tuned with (train.py may override those)."""

    name: str
    lstm_units: tuple[int, ...]  # stacked LSTM layer widths; the last returns only its final state
    dropout: float  # Dropout layer after the LSTM stack (0 = none)
    dense_units: int  # hidden Dense(relu) layer before the output (0 = none)
    zero_head: bool  # output layer starts at zero weights: the untrained model IS persistence
    loss: str  # "mse" or "huber" (huber on the scaled target: robust to the few huge minute moves)
    # "price2": weight each sample by its last close squared (normalised to mean 1), so the loss is the squared
    # error in price units that the evaluation and the promotion gate measure; "none": every sample alike.
    weighting: str
    # Shrink the trained output toward persistence by the least-squares factor a in [0, 1] fitted on the
    # validation samples (output layer weights x a): a weak signal is scaled down instead of over-traded.
    calibrate: bool
    batch_size: int  # samples per step PER RANK
    learning_rate: float  # Adam LR for one rank; train.py multiplies it by hvd.size()
    epochs: int  # default number of passes over the training samples
    patience: int  # epochs without a better validation loss before stopping early

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lstm_units"] = list(self.lstm_units)
        return d


PRESETS: dict[str, Preset] = {
    # The seed project's architecture, kept for comparison: LSTM(50) -> Dropout(0.2) -> Dense(32, relu) -> Dense(1).
    "seed": Preset(name="seed", lstm_units=(50,), dropout=0.2, dense_units=32, zero_head=False, loss="mse",
                   weighting="none", calibrate=False, batch_size=256, learning_rate=1e-3, epochs=10, patience=3),
    # The default: a narrower LSTM whose output layer starts at zero (= persistence), trained on the price-unit
    # squared error (MSE, price2 weights) with a low LR, so it moves away from persistence only where the
    # validation loss (the same price-unit error) says that helps.
    "default": Preset(name="default", lstm_units=(32,), dropout=0.1, dense_units=16, zero_head=True,
                      loss="mse", weighting="price2", calibrate=True, batch_size=512, learning_rate=3e-4, epochs=8,
                      patience=2),
    # Tests and CI on CPU: seconds per epoch on a few thousand samples.
    "tiny": Preset(name="tiny", lstm_units=(8,), dropout=0.0, dense_units=0, zero_head=True, loss="mse",
                   weighting="none", calibrate=False, batch_size=128, learning_rate=1e-3, epochs=1, patience=1),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A preset by name, with non-None overrides applied (e.g. ``epochs=3``)."""
    from minutecast.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def build_model(preset: Preset, seed: int = 0) -> Any:
    """A fresh, uncompiled ``tf.keras.Model``: (None, 60, 2) float32 -> (None, 1)."""
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
    if preset.dense_units > 0:
        x = layers.Dense(preset.dense_units, activation="relu", name="hidden")(x)
    init = "zeros" if preset.zero_head else "glorot_uniform"
    outputs = layers.Dense(1, kernel_initializer=init, bias_initializer="zeros", name="move")(x)
    return tf.keras.Model(inputs, outputs, name=f"minutecast_{preset.name}")


def make_loss(preset: Preset) -> Any:
    import tensorflow as tf

    return tf.keras.losses.Huber(delta=1.0) if preset.loss == "huber" else tf.keras.losses.MeanSquaredError()
