"""LiteRT behind one small interface: the only module that imports the TFLite runtime.

``open_runtime(model, threads, accelerator)`` returns a :class:`Runtime` that
runs a batch through a .tflite model.  The model's bytes are loaded into
memory, never memory-mapped from the file: a model copied over the running one
(``cp``) cannot pull pages from under it (SIGBUS); the new file takes effect at
the next load.  Every model is first loaded on the CPU Interpreter, which
verifies the flatbuffer: a truncated or corrupt file is a ModelError, never a
crash inside an accelerator's loader.

- ``cpu``: the LiteRT ``Interpreter`` with XNNPACK (``tflite_runtime`` when only
  that is installed);
- ``gpu``: LiteRT's GPU accelerator through the ``CompiledModel`` API;
- ``PATH.so``: an external delegate (EdgeTPU ``libedgetpu.so.1``, a GPU delegate
  built for a Jetson) loaded into the Interpreter;
- ``auto``: the GPU when it fully accelerates the model, else the CPU.
"""

from __future__ import annotations

import ctypes.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from device.errors import ModelError
from device.native import lacks_arm64_atomics, quiet_native_stderr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float  # 0.0 when the tensor is not quantised
    zero_point: int


class Runtime(Protocol):
    input: TensorSpec
    output: TensorSpec
    description: str  # what runs, for logs and bench output

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def _interpreter_module():
    """LiteRT's interpreter, or tflite_runtime's where only that is installed."""
    try:
        from ai_edge_litert import interpreter
        return interpreter
    except ModuleNotFoundError:
        pass
    try:
        from tflite_runtime import interpreter
        return interpreter
    except ModuleNotFoundError:
        raise ModelError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from None


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]), float(scale),
                      int(zero_point))


class InterpreterRuntime:
    """The classic Interpreter; batches by resizing the input tensor when the batch size changes."""

    def __init__(self, model: bytes, name: str, threads: int, delegate: str | None = None):
        module = _interpreter_module()
        delegates = []
        if delegate:
            try:
                delegates = [module.load_delegate(delegate)]
            except (ValueError, OSError, RuntimeError) as exc:
                raise ModelError(f"cannot load delegate {delegate}: {exc} (is the library installed and built for "
                                 f"this runtime version and CPU architecture?)") from None
        try:
            self._interp = module.Interpreter(model_content=model, num_threads=threads,
                                              experimental_delegates=delegates or None)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load {name}: {str(exc).strip().splitlines()[0]}") from None
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self.input, self.output = _spec(self._in), _spec(self._out)
        self._batch = self.input.shape[0]
        what = f"delegate {delegate}" if delegate else f"CPU (XNNPACK), {threads} thread(s)"
        self.description = f"LiteRT Interpreter on {what}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [len(batch), *self.input.shape[1:]])
            self._interp.allocate_tensors()
            self._batch = len(batch)
        self._interp.set_tensor(self._in["index"], batch)
        self._interp.invoke()
        return self._interp.get_tensor(self._out["index"])


class CompiledRuntime:
    """LiteRT's CompiledModel on the GPU accelerator; one image per run (static shapes)."""

    def __init__(self, model: bytes, cpu: InterpreterRuntime):
        """``cpu``: the same model already verified on the Interpreter; it gives the tensor metadata."""
        if lacks_arm64_atomics():  # CompiledModel loads LiteRT's GPU library (2.3.0 checked): SIGILL on such a CPU
            raise ModelError("GPU accelerator unavailable: LiteRT's accelerator library needs an Armv8.1 CPU "
                             "(LSE atomics), and this one lacks them")
        try:
            from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator
        except ModuleNotFoundError:
            raise ModelError("the GPU accelerator needs ai-edge-litert (CompiledModel API)") from None
        self._bytes = model  # the buffer must outlive the compiled model
        try:
            self._model = CompiledModel.from_buffer(model, hardware_accel=HardwareAccelerator.GPU)
            if not self._model.is_fully_accelerated():
                raise RuntimeError("the GPU accelerator does not support every op of this model")
            self._inputs = self._model.create_input_buffers(0)
            self._outputs = self._model.create_output_buffers(0)
        except Exception as exc:  # the native wrapper raises plain RuntimeError/ValueError variants
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if ctypes.util.find_library("vulkan") is None:
                reason = "no Vulkan driver (libvulkan.so.1) found"
            raise ModelError(f"GPU accelerator unavailable: {reason}") from None
        # The tensor metadata (quantisation) comes from the Interpreter's view of the same bytes.
        self.input, self.output = cpu.input, cpu.output
        self._out_count = int(np.prod(self.output.shape))
        self.description = "LiteRT CompiledModel on the GPU accelerator"

    def run(self, batch: np.ndarray) -> np.ndarray:
        results = []
        for image in batch:
            self._inputs[0].write(np.ascontiguousarray(image[None]))
            self._model.run_by_index(0, self._inputs, self._outputs)
            results.append(self._outputs[0].read(self._out_count, self.output.dtype).reshape(self.output.shape))
        return np.concatenate(results, axis=0)


ACCELERATORS = ("auto", "cpu", "gpu")


def read_model(path: str | Path) -> bytes:
    """The whole file in memory (see the module's docstring for why not a memory map)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model not found: {path}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc.strerror or exc}") from None


def open_runtime(model: str | Path | bytes, threads: int = 1, accelerator: str = "auto",
                 name: str = "the model") -> Runtime:
    """Load ``model`` (a path, or its bytes) on the requested accelerator and log one line saying what runs
    and why.  The CPU Interpreter loads it first in every case: it verifies the file."""
    if not isinstance(model, bytes):
        model, name = read_model(model), str(model)
    cpu = InterpreterRuntime(model, name, threads)  # a corrupt model fails here, as a ModelError
    if accelerator == "cpu":
        runtime = cpu
        log.info("classifier: %s (requested)", runtime.description)
    elif accelerator == "gpu":
        runtime = CompiledRuntime(model, cpu)
        log.info("classifier: %s (requested)", runtime.description)
    elif accelerator == "auto":
        try:
            with quiet_native_stderr():  # a machine without Vulkan makes the GPU probe print pages
                runtime = CompiledRuntime(model, cpu)
            log.info("classifier: %s (auto: the GPU accelerator took the whole model)", runtime.description)
        except ModelError as exc:
            runtime = cpu
            log.info("classifier: %s (auto: %s)", runtime.description, exc)
    else:
        if not Path(accelerator).exists() and "/" in accelerator:
            raise ModelError(f"delegate library not found: {accelerator}")
        runtime = InterpreterRuntime(model, name, threads, delegate=accelerator)
        log.info("classifier: %s (requested)", runtime.description)
    return runtime


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float input -> the tensor's dtype (identity cast for float models)."""
    if spec.dtype in (np.int8, np.uint8) and spec.scale:
        info = np.iinfo(spec.dtype)
        return np.clip(np.round(x / spec.scale + spec.zero_point), info.min, info.max).astype(spec.dtype)
    return x.astype(spec.dtype)


def dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype in (np.int8, np.uint8) and spec.scale:
        return (y.astype(np.float32) - spec.zero_point) * spec.scale
    return y.astype(np.float32)


def to_input(images: np.ndarray, manifest, spec: TensorSpec) -> np.ndarray:
    """uint8 (N, size, size, channels) model-size images -> the input tensor, as the manifest says."""
    x = images.astype(np.float32) * manifest.scale + manifest.offset
    return quantize(x, spec)


def to_probs(raw: np.ndarray, manifest, spec: TensorSpec) -> np.ndarray:
    """The output tensor -> (N, classes) probabilities (a sigmoid's p becomes [1 - p, p]).

    Rows are renormalised: an int8 softmax's dequantised outputs sum to 1 only to within a few
    quantisation steps, and the top-1 class does not change."""
    y = dequantize(raw, spec).reshape(len(raw), -1)
    if manifest.activation == "sigmoid":
        y = np.concatenate([1 - y, y], axis=1)
    y = np.clip(y, 0.0, None)
    total = y.sum(axis=1, keepdims=True)
    return np.divide(y, total, out=np.full_like(y, 1 / y.shape[1]), where=total > 0)
