"""Workstation to device: Keras run -> .tflite with its manifest, verified and benchmarked in LiteRT."""
