"""The measurements and the verdict of scripts/arm64_check.sh: the device on emulated arm64 against the host.

    python arm64_check.py prepare DATA WORK [--every 5] [--frames 40]   (host) WORK/val: every Nth image of
        DATA/val per class; WORK/faces: camera-sized frames, one real face each (convert.cropstudy.place)
    python arm64_check.py measure SAMPLE OUT.json                         (each machine) the int8 accuracy of
        the bundled model on SAMPLE through convert.evaluate's own functions, a digest of every model input,
        every top-1, and digests of the preprocessing of the demo portrait cropped at several sizes
    python arm64_check.py summary HOST_DIR ARM64_DIR [--pi4 DIR]          (host) one table of both machines'
        figures (and of the Cortex-A72 runs in DIR); exit 1 when a value is off

The shell script runs it from a copy outside the checkout, so the packages it imports (device, convert,
training) are those of the installed wheel on each machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import platform
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

# What the check demands of the emulated machine, each against the same run on the host.
MIN_BENCH_RECALL = 0.95     # the issue measured 1.000: the faces found with detection every 3rd frame
MIN_BENCH_AGREEMENT = 0.85  # the issue measured 0.94, the host 0.93: labels kept while following faces
MIN_FACES_FOUND = 0.90      # short-range finds >= 97% of FER2013 faces upscaled to 200 px (convert.cropstudy)
MIN_LABELS_AS_HOST = 0.95   # the detector's float arithmetic may move a box by a pixel, and with it a label
CROPS = (40, 48, 56, 96, 128, 150, 200, 333)  # square crops of the portrait: grown, and shrunk by whole and fractional factors
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def prepare(data: Path, work: Path, every: int, frames: int) -> None:
    """WORK/val: every ``every``-th image of each class of DATA/val; WORK/faces: ``frames`` camera frames."""
    from convert.cropstudy import place

    val = data / "val" if (data / "val").is_dir() else data
    picked = []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::every]
        (work / "val" / folder.name).mkdir(parents=True)
        for path in images:
            shutil.copyfile(path, work / "val" / folder.name / path.name)
        picked += images
    if not picked:
        raise SystemExit(f"error: no images in {val}")
    (work / "faces").mkdir()
    step = max(1, len(picked) // frames)
    for i, path in enumerate(picked[::step][:frames]):
        frame, _ = place(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        cv2.imwrite(str(work / "faces" / f"{i:04d}.png"), frame)  # lossless: both machines read the same pixels


def measure(sample: Path, out: Path) -> None:
    from convert.evaluate import compare, load_labelled, predict
    from device.classifier import open_checked
    from device.locations import default_model
    from device.manifest import write_atomic
    from device.preprocess import to_model_image
    from device.sources import demo_portrait

    runtime, manifest = open_checked(default_model(), 1, "cpu")
    data = load_labelled(sample, manifest)
    probs = predict(runtime, manifest, data.x)
    metrics = compare(data, probs, manifest.labels)
    portrait = demo_portrait()
    cy, cx = portrait.shape[0] // 3, portrait.shape[1] // 2  # about the face
    stages = {"decode": digest(portrait)}
    for size in CROPS:
        crop = portrait[max(0, cy - size // 2):cy + (size + 1) // 2, max(0, cx - size // 2):cx + (size + 1) // 2]
        stages[f"{size}->{manifest.input_size}"] = digest(
            to_model_image(crop, manifest.input_size, manifest.color, bgr=True))
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": {name: metadata.version(name) for name in
                     ("edge-emotion", "ai-edge-litert", "mediapipe", "opencv-contrib-python", "numpy")},
        "n": len(data), "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"],
        "files": [str(Path(f).relative_to(sample)) for f in data.files],
        "inputs": [digest(x) for x in data.x],
        "top1": probs.argmax(axis=1).tolist(),
        "stages": stages,
    }
    write_atomic(out, json.dumps(result, indent=1).encode())


# --- the summary -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    what: str
    host: str
    arm64: str
    rule: str
    ok: bool | None  # None: shown, not checked


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def labels_as_host(host: list[dict], arm64: list[dict]) -> tuple[int, int]:
    """(arm64 faces whose host face on the same frame, IoU >= 0.5, has the same label; arm64 faces)."""
    def box(r: dict) -> tuple[float, ...]:
        return tuple(float(r[k]) for k in ("x", "y", "w", "h"))

    def iou(a: tuple, b: tuple) -> float:
        w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)

    by_frame: dict[tuple, list[dict]] = {}
    for r in host:
        by_frame.setdefault((r["frame"], r["source"]), []).append(r)
    same = 0
    for r in arm64:
        candidates = by_frame.get((r["frame"], r["source"]), [])
        best = max(candidates, key=lambda h: iou(box(h), box(r)), default=None)
        same += best is not None and iou(box(best), box(r)) >= 0.5 and best["label"] == r["label"]
    return same, len(arm64)


def bench_figures(path: Path) -> dict[str, float]:
    text = path.read_text()
    out = {}
    for key in ("recall", "agreement", "end-to-end"):
        found = re.search(rf"^{key}: ([0-9.]+)", text, re.M)
        if found:
            out[key] = float(found.group(1))
    return out


def pi4_rows(pi4: Path, host: dict) -> tuple[list[Row], str]:
    """An Armv8.0 core (a Raspberry Pi 4's Cortex-A72) with the same wheel: the demo runs or stops with one
    error line (never a bare crash), and the LiteRT classifier gives the host's outputs."""
    log = (pi4 / "demo.log").read_text(errors="replace")
    error = re.search(r"^error: (.*)$", log, re.M)
    outcome = "runs" if re.search(r"^done: ", log, re.M) else "error" if error else "crashed"
    a72 = json.loads((pi4 / "measure.json").read_text())
    same = sum(a == b for a, b in zip(a72["top1"], host["top1"]))
    rows = [Row("Pi 4 core (Cortex-A72): demo", "", outcome, "runs, or one error: line", outcome != "crashed"),
            Row("Pi 4 core: LiteRT top-1 as on the host", "", f"{same}/{host['n']}", "all",
                a72["files"] == host["files"] and same == host["n"])]
    return rows, f"Pi 4 core (Cortex-A72, Armv8.0): {error.group(1) if error else outcome}"


def run_rows(host_dir: Path, arm_dir: Path, frames: int) -> list[Row]:
    """The demo, the bench and the folder of faces on both machines."""
    rows = []
    demo_h, demo_a = read_rows(host_dir / "demo.csv"), read_rows(arm_dir / "demo.csv")
    same, n = labels_as_host(demo_h, demo_a)
    rows.append(Row(f"demo rows ({frames} frames, 2 faces)", str(len(demo_h)), str(len(demo_a)),
                    f"= {2 * frames}", len(demo_a) == 2 * frames == len(demo_h)))
    rows.append(Row("demo labels as on the host", "", f"{same}/{n}", f">= {MIN_LABELS_AS_HOST:.0%}",
                    n > 0 and same >= MIN_LABELS_AS_HOST * n))
    bench_h, bench_a = bench_figures(host_dir / "bench.log"), bench_figures(arm_dir / "bench.log")
    for key, low in (("recall", MIN_BENCH_RECALL), ("agreement", MIN_BENCH_AGREEMENT)):
        rows.append(Row(f"bench {key}", f"{bench_h.get(key, float('nan')):.3f}",
                        f"{bench_a.get(key, float('nan')):.3f}", f">= {low}", bench_a.get(key, -1.0) >= low))
    faces_h, faces_a = read_rows(host_dir / "faces.csv"), read_rows(arm_dir / "faces.csv")
    count = len(list((arm_dir.parent / "faces").glob("*.png")))
    rows.append(Row(f"face folder rows ({count} frames)", str(len(faces_h)), str(len(faces_a)),
                    f">= {MIN_FACES_FOUND:.0%} of frames", len(faces_a) >= MIN_FACES_FOUND * count))
    same, n = labels_as_host(faces_h, faces_a)
    rows.append(Row("face folder labels as on the host", "", f"{same}/{n}", f">= {MIN_LABELS_AS_HOST:.0%}",
                    n > 0 and same >= MIN_LABELS_AS_HOST * n))
    rows.append(Row("end-to-end fps (bench)", f"{bench_h.get('end-to-end', 0):.1f}",
                    f"{bench_a.get('end-to-end', 0):.1f}", "emulated: not a Pi's speed", None))
    return rows


def sample_rows(host: dict, arm: dict) -> list[Row]:
    """The val/ sample and the preprocessing digests: the same bytes in, the same classes out."""
    same_files = host["files"] == arm["files"]
    inputs = sum(a == b for a, b in zip(host["inputs"], arm["inputs"]))
    top1 = sum(a == b for a, b in zip(host["top1"], arm["top1"]))
    differ = [k for k in host["stages"] if host["stages"][k] != arm["stages"].get(k)]
    n, stages = arm["n"], len(host["stages"])
    return [
        Row(f"val sample int8 accuracy (n={n})", f"{host['accuracy']:.4f}", f"{arm['accuracy']:.4f}", "equal",
            same_files and host["accuracy"] == arm["accuracy"]),
        Row("val sample model inputs identical", "", f"{inputs}/{n}", "all", same_files and inputs == n),
        Row("val sample top-1 as on the host", "", f"{top1}/{n}", "all", same_files and top1 == n),
        Row("preprocessing digests identical", "", f"{stages - len(differ)}/{stages}",
            "all" + (f" (differ: {', '.join(differ)})" if differ else ""), not differ),
    ]


def summarize(host_dir: Path, arm_dir: Path, frames: int, pi4: Path | None = None) -> tuple[list[Row], list[str]]:
    host, arm = (json.loads((d / "measure.json").read_text()) for d in (host_dir, arm_dir))
    rows = run_rows(host_dir, arm_dir, frames) + sample_rows(host, arm)
    notes = [f"host: {host['machine']}, Python {host['python']}; arm64: {arm['machine']}, Python {arm['python']}; "
             + ", ".join(f"{k} {v}" for k, v in arm["versions"].items())]
    if host["versions"] != arm["versions"]:
        notes.append(f"versions differ: host {host['versions']}")
    if pi4 is not None:
        more, note = pi4_rows(pi4, host)
        rows += more
        notes.append(note)
    return rows, notes


def summary(host_dir: Path, arm_dir: Path, frames: int, pi4: Path | None) -> int:
    try:
        rows, notes = summarize(host_dir, arm_dir, frames, pi4)
    except (OSError, KeyError, ValueError) as exc:  # a run that wrote nothing: the check fails, named
        print(f"error: arm64 check: missing or unreadable results: {exc}", file=sys.stderr)
        return 1
    print(f"{'':<38}{'host':>10}{'arm64':>12}  check")
    for r in rows:
        verdict = "" if r.ok is None else "ok" if r.ok else "FAILED"
        print(f"{r.what:<38}{r.host:>10}{r.arm64:>12}  {r.rule:<28} {verdict}".rstrip())
    for note in notes:
        print(note)
    failed = [r.what for r in rows if r.ok is False]
    checked = sum(r.ok is not None for r in rows)
    print(f"arm64 check: {'FAILED: ' + '; '.join(failed) if failed else 'passed'} ({checked - len(failed)} of "
          f"{checked} checks)")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("data", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--frames", type=int, default=40)
    m = sub.add_parser("measure")
    m.add_argument("sample", type=Path)
    m.add_argument("out", type=Path)
    s = sub.add_parser("summary")
    s.add_argument("host", type=Path)
    s.add_argument("arm64", type=Path)
    s.add_argument("--frames", type=int, required=True, help="the demo's frames")
    s.add_argument("--pi4", type=Path, help="the Cortex-A72 runs' folder")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.data, args.work, args.every, args.frames)
    elif args.command == "measure":
        measure(args.sample, args.out)
    else:
        return summary(args.host, args.arm64, args.frames, args.pi4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
