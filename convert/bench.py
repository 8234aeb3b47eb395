"""``python -m convert bench``: LiteRT latency per inference at each thread count, file size and peak memory.

Needs LiteRT and NumPy only, so it runs on the device as well as on the workstation.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device import manifest as mf
from device.errors import DeviceError, ModelError
from device.runtime import TensorSpec, open_runtime, to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    threads: int
    median_ms: float
    p95_ms: float
    runs: int


@dataclass
class BenchResult:
    model: Path
    size_bytes: int
    mode: str | None
    input: TensorSpec
    runtime: str
    rss_before_bytes: int | None  # peak RSS before LiteRT and the model were loaded
    rss_peak_bytes: int | None
    timings: list[Timing] = field(default_factory=list)


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far (None where the platform does not say)."""
    try:
        import resource
    except ModuleNotFoundError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _example_input(spec: TensorSpec, manifest: mf.Manifest | None) -> np.ndarray:
    """One image's input tensor: random pixels through the manifest's preprocessing when there is one."""
    rng = np.random.default_rng(0)
    shape = (1, *spec.shape[1:])
    if manifest is not None:
        return to_input(rng.integers(0, 256, shape, dtype=np.uint8), manifest, spec)
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(spec.dtype)
    return rng.random(shape, dtype=np.float32).astype(spec.dtype)


def bench(model: str | Path, threads: tuple[int, ...] = (1, 2, 4), runs: int = 100, warmup: int = 10,
          accelerator: str = "cpu") -> BenchResult:
    """Time ``runtime.run`` on one image, ``runs`` times after ``warmup`` untimed runs, at each thread count."""
    model = Path(model)
    if not model.is_file():
        raise ModelError(f"model not found: {model}")
    if runs < 1 or warmup < 0 or not threads or min(threads) < 1:
        raise ModelError("--runs and --threads must be at least 1, --warmup at least 0")
    try:
        manifest = mf.load(mf.manifest_path_for(model))
    except DeviceError as exc:
        log.info("no usable manifest (%s); timing with random input", exc)
        manifest = None
    result = None
    rss_before = peak_rss_bytes()
    for count in threads:
        runtime = open_runtime(model, count, accelerator)
        x = _example_input(runtime.input, manifest)
        for _ in range(warmup):
            runtime.run(x)
        times = np.empty(runs)
        for i in range(runs):
            start = time.perf_counter()
            runtime.run(x)
            times[i] = time.perf_counter() - start
        if result is None:
            result = BenchResult(model, model.stat().st_size, manifest.mode if manifest else None, runtime.input,
                                 runtime.description, rss_before, None)
        result.timings.append(Timing(count, float(np.median(times) * 1e3), float(np.percentile(times, 95) * 1e3),
                                     runs))
        del runtime
    result.rss_peak_bytes = peak_rss_bytes()
    return result


def machine() -> str:
    """``arch, CPU model, N CPU(s)``: a Raspberry Pi's board name, else the CPU model, from /proc/cpuinfo."""
    names = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            names.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = names.get("Model") or names.get("model name") or platform.processor()
    return ", ".join(part for part in (platform.machine(), model, f"{os.cpu_count()} CPU(s)") if part)


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def format_table(result: BenchResult) -> str:
    """A Markdown table with the model, the machine and the memory as its caption."""
    spec = result.input
    shape = "x".join(str(d) for d in spec.shape)
    runtime = result.runtime.split(", ")[0] if "thread" in result.runtime else result.runtime
    lines = [f"model: {result.model} ({result.mode or 'mode unknown'}, {result.size_bytes / 1e6:.2f} MB;"
             f" input {shape} {spec.dtype.name})",
             f"runtime: {runtime}; machine: {machine()}",
             "",
             "| threads | median ms | p95 ms | runs |",
             "|--------:|----------:|-------:|-----:|"]
    for t in result.timings:
        lines.append(f"| {t.threads:>7} | {t.median_ms:>9.2f} | {t.p95_ms:>6.2f} | {t.runs:>4} |")
    lines += ["", f"peak RSS: {_mb(result.rss_peak_bytes)} ({_mb(result.rss_before_bytes)} before loading LiteRT"
                  f" and the model)"]
    return "\n".join(lines)
