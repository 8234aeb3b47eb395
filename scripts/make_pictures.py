#!/usr/bin/env python3
"""Regenerate the README's pictures in docs/img/ with the project's own commands.

    .venv/bin/python scripts/make_pictures.py

- docs/img/demo_frame.png: a frame of ``python -m device run --source demo --bars --output DIR/``;
- docs/img/report_shares.png: the class-share plot of ``python -m device report`` on a generated
  three-day log (scripts/bench_report.py writes it in the CSV log's format).

Both are shrunk to a small palette PNG (Pillow, which comes with matplotlib).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import write_log  # noqa: E402


def device(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "device", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def shrink(src: Path, dst: Path, width: int, colors: int = 128) -> None:
    image = Image.open(src).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    tmp = dst.with_name(f".{dst.name}.tmp")
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    tmp.replace(dst)
    print(f"{dst.relative_to(ROOT)}: {image.width}x{image.height}, {dst.stat().st_size // 1024} KiB")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        device("run", "--source", "demo", "--max-frames", "40", "--bars", "--output", f"{tmp / 'frames'}/")
        shrink(sorted((tmp / "frames").glob("*.jpg"))[-1], OUT / "demo_frame.png", 480)
        write_log(tmp / "days.csv", 100_000, days=3, runs=1)
        device("report", str(tmp / "days.csv"), "--out", str(tmp / "report"))
        shrink(tmp / "report" / "shares.png", OUT / "report_shares.png", 640, colors=48)
    return 0


if __name__ == "__main__":
    sys.exit(main())
