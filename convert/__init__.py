"""Workstation to device: Keras run -> .tflite with its manifest, verified and benchmarked in LiteRT."""

MODES = ("int8", "float16", "dynamic", "float32")  # what ``python -m convert quantize --mode`` makes
IO_TYPES = ("int8", "uint8")  # int8 mode: the type of the input and output tensors
