"""``python -m convert quantize``: Keras -> .tflite (int8, float16, dynamic, float32) with its manifest.

The TFLite converter may use LiteRT's built-in ops only (no SELECT_TF_OPS),
so the device's runtime can run whatever this writes.  Nothing is written
until the model has converted, loaded in LiteRT and, with ``--verify``,
passed the accuracy check; then the .tflite and its manifest (``NAME.json``)
are each written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device import manifest as mf
from device.classifier import check_model, predict
from device.errors import ModelError
from device.runtime import Runtime, TensorSpec, open_runtime, to_input
from training.data import Dataset
from convert import IO_TYPES, MODES, evaluate
from convert.source import KerasModel, first_line, float_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    mode: str
    out: str | Path
    io_type: str = "int8"  # int8 mode: the input and output tensors' type
    max_drop: float = 1.0  # --verify: largest accepted accuracy drop, in percentage points
    crop_margin: float | None = None  # None keeps the run manifest's crop
    crop_square: bool | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # calibration data etc., for the manifest
    only_if_better: bool = False  # --verify: replace ``out`` only if this model beats it on the same data
    votes: dict[str, Any] | None = None  # --verify on FER+ votes: the votes file's lineage (training/votes.py)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ModelError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.io_type not in IO_TYPES:
            raise ModelError(f"--io-type must be one of {', '.join(IO_TYPES)}, got {self.io_type!r}")
        if Path(self.out).suffix != ".tflite":
            raise ModelError(f"--out must name a .tflite file, got {self.out}")
        if self.crop_margin is not None and not 0.0 <= self.crop_margin <= 1.0:
            raise ModelError(f"--crop-margin must be between 0 and 1, got {self.crop_margin}")


@contextlib.contextmanager
def _native_output_to_debug_log():
    """TensorFlow's converter writes MLIR diagnostics and notes straight to file descriptors 1 and 2.

    They are kept out of the terminal (the CLI reports one error line) unless
    debug logging is on, where they pass through.
    """
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _converter_error(exc: Exception, mode: str) -> ModelError:
    ops = sorted({e.operator.name for e in getattr(exc, "errors", None) or () if e.operator.name})
    if ops:
        return ModelError(f"the model uses ops that LiteRT has no built-in {'int8 ' if mode == 'int8' else ''}"
                          f"kernel for: {', '.join(ops)} (only built-in ops are allowed, so that the device can run"
                          f" the model)")
    return ModelError(f"the TFLite converter failed ({mode}): {first_line(exc)}")


def convert(model: KerasModel, mode: str, calibration: np.ndarray | None = None, io_type: str = "int8") -> bytes:
    """The .tflite bytes of ``model`` in ``mode`` (int8 calibrates on uint8 model-size ``calibration`` images)."""
    import tensorflow as tf

    manifest = model.manifest
    with _native_output_to_debug_log():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(model.saved_model()))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode in ("int8", "float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if calibration is None or not len(calibration):
            raise ModelError("int8 needs calibration images (--calibration DATA_DIR)")
        spec = float_spec(manifest)
        converter.representative_dataset = lambda: ([to_input(image[None], manifest, spec)] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
    started = time.perf_counter()
    try:
        with _native_output_to_debug_log(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")  # the input is raw pixels
            data = converter.convert()
    except Exception as exc:  # ConverterError, or ValueError/RuntimeError from the calibrator
        raise _converter_error(exc, mode) from None
    log.info("converted %s to %s in %.1f s (%d bytes)", model.path, mode, time.perf_counter() - started, len(data))
    return data


def _quant(spec: TensorSpec) -> mf.Quant | None:
    if spec.dtype in (np.int8, np.uint8) and spec.scale:
        return mf.Quant(scale=spec.scale, zero_point=spec.zero_point, dtype=spec.dtype.name)
    return None


def tool_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    tools = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for package in ("ai-edge-litert", "edge-emotion"):
        try:
            tools[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return tools


def verify(runtime: Runtime, model: KerasModel, data: Dataset, data_dir: str, max_drop: float) -> dict[str, Any]:
    """The .tflite against its Keras model on labelled images: the manifest's ``verification``."""
    manifest = model.manifest
    probs = predict(runtime, manifest, data.x)
    result = evaluate.compare(data, probs, manifest.labels, model.predict(data.x))
    on_votes = {key: result[key] for key in ("votes_cross_entropy", "folder_label_accuracy") if key in result}
    return {
        **on_votes,
        "data": data_dir,
        "n": result["n"],
        "accuracy": result["accuracy"],
        "f1_macro": result["f1_macro"],
        "per_class_accuracy": result["per_class_accuracy"],
        "keras_accuracy": result["keras"]["accuracy"],
        "keras_f1_macro": result["keras"]["f1_macro"],
        "accuracy_drop_pp": result["accuracy_drop_pp"],
        "max_drop_pp": max_drop,
        "agreement_with_keras": result["agreement_with_keras"],
        "mean_abs_prob_diff": result["mean_abs_prob_diff"],
    }


def check_beats(out: Path, verification: dict[str, Any]) -> None:
    """--only-if-better: a model replaces the one at ``out`` only if it is more accurate on the same images."""
    if not verification:
        raise ModelError("--only-if-better needs --verify DATA_DIR to measure the new model")
    try:
        previous = mf.load(mf.manifest_path_for(out)).verification if out.exists() else {}
    except ModelError:
        previous = {}
    same_data = ((previous.get("data"), previous.get("n"), (previous.get("votes") or {}).get("sha256"))
                 == (verification["data"], verification["n"], (verification.get("votes") or {}).get("sha256")))
    if previous.get("accuracy") is not None and same_data and verification["accuracy"] <= previous["accuracy"]:
        raise ModelError(f"accuracy {verification['accuracy']:.4f} does not beat {out}'s {previous['accuracy']:.4f}"
                         f" on the same {verification['n']} images; {out} is unchanged")


def quantize(model: KerasModel, opts: Options, calibration: np.ndarray | None = None,
             verify_data: Dataset | None = None, verify_dir: str | Path | None = None) -> mf.Manifest:
    """Convert, load in LiteRT, verify; then write ``opts.out`` and its manifest. Returns the manifest.

    ``calibration`` (int8) and ``verify_data`` (labelled, from ``verify_dir``) are uint8 model-size images.
    """
    data = convert(model, opts.mode, calibration, opts.io_type)
    out = Path(opts.out)
    with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
        candidate = Path(tmp) / out.name
        candidate.write_bytes(data)
        runtime = open_runtime(candidate, threads=min(4, os.cpu_count() or 1), accelerator="cpu")
        check_model(runtime, model.manifest, out)
        verification = {}
        if verify_data is not None:
            verification = verify(runtime, model, verify_data, str(verify_dir), opts.max_drop)
            if opts.votes:
                verification["votes"] = opts.votes
        input_spec, output_spec = runtime.input, runtime.output
        del runtime
    if verification and verification["accuracy_drop_pp"] > opts.max_drop:
        kept = " (the file already there is unchanged)" if out.exists() else ""
        raise ModelError(f"accuracy drop {verification['accuracy_drop_pp']:.2f} pp (Keras "
                         f"{verification['keras_accuracy']:.4f} -> {opts.mode} {verification['accuracy']:.4f} on "
                         f"{verification['n']} images) exceeds --max-drop {opts.max_drop:g}; no model written to "
                         f"{out}{kept}")
    if opts.only_if_better:
        check_beats(out, verification)
    base = model.manifest
    crop = dataclasses.replace(base.crop, margin=base.crop.margin if opts.crop_margin is None else opts.crop_margin,
                               square=base.crop.square if opts.crop_square is None else opts.crop_square)
    source = {**base.source, "keras_model": str(model.path), "keras_sha256": model.sha256,
              "training_tools": dict(base.tools), **opts.provenance}
    if opts.mode == "int8":
        source["io_type"] = opts.io_type
    manifest = base.replace(crop=crop, mode=opts.mode, model_sha256=hashlib.sha256(data).hexdigest(),
                            input_quant=_quant(input_spec), output_quant=_quant(output_spec), source=source,
                            tools=tool_versions(), verification=verification)
    mf.write_atomic(out, data)
    mf.save(manifest, mf.manifest_path_for(out))
    log.info("wrote %s and %s", out, mf.manifest_path_for(out))
    return manifest
