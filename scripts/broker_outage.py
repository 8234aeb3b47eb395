"""A broker that goes away for a minute: the pipeline's fps, its slowest frame, and its memory (RSS).

    python scripts/broker_outage.py [--down 60]        # from the repository root; needs mosquitto

Starts Mosquitto on a free loopback port, runs the demo source paced like a 30 fps camera with --mqtt on
(queue 1000), stops the broker for ``--down`` seconds, starts it again on the same port, and prints fps,
step times, RSS and the MQTT counters every 10 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device import config as cfgmod  # noqa: E402
from device.pipeline import Pipeline  # noqa: E402
from device.soak import rss_mb  # noqa: E402
from tests.brokers import Mosquitto  # noqa: E402


def run(pipeline: Pipeline, seconds: float, label: str, fps: float = 30.0) -> None:
    steps = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        if pipeline.step() is None:
            raise SystemExit("the source ended")
        steps.append(time.perf_counter() - start)
        time.sleep(max(0.0, 1 / fps - steps[-1]))  # a camera delivers frames at its own pace
    s = np.array(steps)
    print(f"{label:>20}: {len(s) / seconds:5.1f} fps, step median {1000 * np.median(s):.1f} ms, "
          f"max {1000 * s.max():.1f} ms, RSS {rss_mb():.1f} MB, {pipeline.results.health().lstrip(', ')}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", type=float, default=60.0, help="seconds without a broker (default: 60)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="outage-"))
    broker = Mosquitto(folder).start()
    config = cfgmod.load(None, {"source": {"uri": "demo", "loop": True},
                                "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}/outage"}})
    pipeline = Pipeline(config)
    try:
        run(pipeline, 15, "broker up (warm-up)")
        run(pipeline, 10, "broker up")
        broker.stop()
        start = rss_mb()
        for i in range(int(args.down // 10)):
            run(pipeline, 10, f"broker down {10 * (i + 1)} s")
        end = rss_mb()
        broker.start()
        run(pipeline, 10, "broker back")
    finally:
        pipeline.close()
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"RSS when the broker went away: {start:.1f} MB; after {args.down:.0f} s without it: {end:.1f} MB "
          f"({end - start:+.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
