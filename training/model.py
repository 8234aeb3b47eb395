"""Classifier architectures: MobileNetV2 (the product) and a small baseline CNN.

Both take raw pixels (0..255, float) and scale them in their first layer, so
the preprocessing ships inside the model and the manifest says scale 1, offset 0.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from training.data import DataError

ARCHITECTURES = ("mobilenetv2", "baseline")


def build(arch: str, num_classes: int, input_size: int, channels: int, *, alpha: float = 1.0,
          weights: str = "none", dropout: float = 0.3, activation: str = "softmax",
          bn_momentum: float = 0.99, name: str = "classifier") -> keras.Model:
    if arch == "mobilenetv2":
        model = mobilenetv2(num_classes, input_size, channels, alpha, weights, dropout, activation)
    elif arch == "baseline":
        model = baseline_cnn(num_classes, input_size, channels, dropout, activation)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    set_bn_momentum(model, bn_momentum)
    return keras.Model(model.inputs, model.outputs, name=name)


def set_bn_momentum(model: keras.Model, momentum: float) -> None:
    """keras.applications builds BatchNorm with momentum 0.999: a ~1000-step moving average that, when
    training from scratch, trails the weights so far that inference-mode predictions collapse to one
    class for many epochs (measured on FER2013: val accuracy 0.18 with batch statistics at 0.30)."""
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def head(x, num_classes: int, dropout: float, activation: str):
    if activation == "sigmoid" and num_classes != 2:
        raise DataError("a sigmoid head needs exactly 2 classes")
    x = layers.Dropout(dropout, name="head_dropout")(x)
    units = 1 if activation == "sigmoid" else num_classes
    # float32 output keeps the softmax stable under mixed precision.
    return layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)


def mobilenetv2(num_classes: int, input_size: int, channels: int, alpha: float, weights: str,
                dropout: float, activation: str) -> keras.Model:
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)  # MobileNetV2's range
    base_weights = None if weights == "none" else weights
    if base_weights is not None and channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])  # ImageNet weights expect 3 channels
    base_channels = 3 if base_weights is not None else channels
    if base_weights not in (None, "imagenet") and not Path(base_weights).is_file():
        raise DataError(f"--weights {weights}: no such weights file")
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(input_size, input_size, base_channels), alpha=alpha, include_top=False,
            weights=base_weights, pooling="avg")
    except Exception as exc:  # keras raises bare Exception/URLError types when the download fails
        if base_weights == "imagenet":
            raise DataError("--weights imagenet needs the ImageNet weights, which Keras downloads from the internet;"
                            " offline, use --weights none or --weights PATH to a local weights file") from None
        raise DataError(f"cannot build MobileNetV2 with weights {weights!r}: {exc}") from None
    x = base(x)
    return keras.Model(inputs, head(x, num_classes, dropout, activation))


def baseline_cnn(num_classes: int, input_size: int, channels: int, dropout: float, activation: str) -> keras.Model:
    """Three conv blocks: the kind of small CNN the FER2013 tutorials train."""
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x, num_classes, dropout, activation))


def base_layer(model: keras.Model) -> keras.Model | None:
    """The pretrained backbone (for freezing), if the model has one."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if nested else None
