"""Image augmentation as one Keras layer of backend-neutral array ops.

It runs inside the compiled train step (a TF graph on TensorFlow, a jitted
function on JAX), on whatever device trains the model, so the input pipeline
only moves uint8 arrays and never starves an accelerator.  At inference it is
the identity; the exported ``model.keras`` leaves it out altogether.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="training")
class Augment(keras.layers.Layer):
    """Random horizontal flip, rotation, zoom, shift, brightness and contrast."""

    def __init__(self, flip: bool = True, rotation_deg: float = 10.0, zoom: float = 0.1,
                 shift: float = 0.1, brightness: float = 0.2, contrast: float = 0.2,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.flip, self.rotation_deg, self.zoom, self.shift = flip, rotation_deg, zoom, shift
        self.brightness, self.contrast, self.seed = brightness, contrast, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        images = ops.cast(images, "float32")
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(low, high):
            return keras.random.uniform((n,), low, high, seed=self.seed_generator)

        if self.flip:
            mirrored = ops.flip(images, axis=2)
            images = ops.where(ops.reshape(uniform(0, 1) < 0.5, (-1, 1, 1, 1)), mirrored, images)

        # One affine map per image: output pixel -> input pixel.
        angle = uniform(-1, 1) * (self.rotation_deg * math.pi / 180)
        scale = 1.0 + uniform(-self.zoom, self.zoom)
        tx, ty = uniform(-self.shift, self.shift) * width, uniform(-self.shift, self.shift) * height
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a0, a1 = scale * ops.cos(angle), -scale * ops.sin(angle)
        b0, b1 = scale * ops.sin(angle), scale * ops.cos(angle)
        a2 = cx - a0 * cx - a1 * cy + tx
        b2 = cy - b0 * cx - b1 * cy + ty
        zeros = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        images = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest")

        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        contrast = ops.reshape(1.0 + uniform(-self.contrast, self.contrast), (-1, 1, 1, 1))
        brightness = ops.reshape(uniform(-self.brightness, self.brightness) * 255.0, (-1, 1, 1, 1))
        return ops.clip((images - mean) * contrast + mean + brightness, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "rotation_deg": self.rotation_deg, "zoom": self.zoom,
                "shift": self.shift, "brightness": self.brightness, "contrast": self.contrast, "seed": self.seed}
