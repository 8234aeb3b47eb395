"""The cost of --mqtt and --serve with one viewer: the same pipeline with its result sinks on and off,
in interleaved blocks of frames, so that a machine's changing load hits both alike.

    python scripts/bench_fleet.py --mqtt mqtt://127.0.0.1:1883/bench [--source demo] [--block 100] [--rounds 10]

Needs a broker at the URL (e.g. ``mosquitto -p 1883``).  The viewer is a separate process reading the
MJPEG stream, as a browser on another machine would.  Prints fps and process CPU per frame for both,
their ratio, and the time ``publish()`` takes in the loop.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device import config as cfgmod  # noqa: E402
from device.pipeline import Pipeline  # noqa: E402
from device.results import ResultSinks  # noqa: E402

VIEWER = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r:
    while r.read(65536):
        pass
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mqtt", required=True, help="broker URL, mqtt://HOST:PORT/PREFIX")
    parser.add_argument("--serve", default="127.0.0.1:18766", help="web view address (default: 127.0.0.1:18766)")
    parser.add_argument("--source", default="demo", help="frame source (default: demo, looped)")
    parser.add_argument("--block", type=int, default=100, help="frames per block (default: 100)")
    parser.add_argument("--rounds", type=int, default=10, help="on/off block pairs (default: 10)")
    args = parser.parse_args()
    config = cfgmod.load(None, {"source": {"uri": args.source, "loop": True}, "mqtt": {"url": args.mqtt},
                                "web": {"serve": args.serve}})
    pipeline = Pipeline(config)
    on, off = pipeline.results, ResultSinks()
    web = next(s for s in on.sinks if hasattr(s, "port"))
    viewer = subprocess.Popen([sys.executable, "-c", VIEWER, f"http://127.0.0.1:{web.port}/stream.mjpg"])
    publish_s: list[float] = []
    publish = on.publish

    def timed(result, stats):
        start = time.perf_counter()
        publish(result, stats)
        publish_s.append(time.perf_counter() - start)

    on.publish = timed
    blocks: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        for _ in range(60):  # warm-up; the viewer connects
            pipeline.step()
        for i in range(args.rounds):
            for name in ("on", "off") if i % 2 else ("off", "on"):
                pipeline.results = on if name == "on" else off
                wall, cpu = time.perf_counter(), cpu_s()
                for _ in range(args.block):
                    pipeline.step()
                blocks[name].append((args.block / (time.perf_counter() - wall), 1000 * (cpu_s() - cpu) / args.block))
        pipeline.results = on
        counters, health = on.counters(), on.health().lstrip(", ")
    finally:
        viewer.terminate()
        pipeline.close()
    print(f"fleet bench: {args.rounds} x {args.block} frames each way from {args.source}; "
          f"viewer encoded {counters.get('web_frames_encoded', 0):.0f} frames; {health}")
    fps = {}
    for name in ("off", "on"):
        a = np.array(blocks[name])
        fps[name] = float(np.median(a[:, 0]))
        print(f"sinks {name:>3}: median {fps[name]:.1f} fps, process CPU {np.median(a[:, 1]):.2f} ms/frame")
    print(f"fps ratio on/off: {fps['on'] / fps['off']:.3f}; publish() in the loop: median "
          f"{1e6 * np.median(publish_s):.0f} us, p95 {1e6 * np.percentile(publish_s, 95):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
