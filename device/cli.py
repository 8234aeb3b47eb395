"""``python -m device {run,bench,soak,models,report,install-service}``: the on-device program.

Options come from a TOML file (``--config``) and flags, flags winning.  Every
failure the user can act on is one line on stderr and an exit code
(78 for config and model errors, 66 for sources, 73 for output paths that
cannot be written, 74 for CSV rows that could not be written), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from device import config as cfgmod
from device.errors import DeviceError

log = logging.getLogger("device")
QUIET_COMMANDS = ("run", "bench", "soak")  # the ones that load LiteRT and MediaPipe (and spawn no pip)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (every option; flags override it)")
    for section, cls in cfgmod.sections():
        group = parser.add_argument_group(f"[{section}]")
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("flag"):
                continue
            text = f"{meta['help']} (config {section}.{f.name}; default: {f.default})"
            dest = f"{section}.{f.name}"
            if isinstance(f.default, bool):
                group.add_argument(meta["flag"], dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                   help=text)
            else:
                hints = cfgmod._field_types(cls)[f.name]
                kind = int if "int" in str(hints) else float if "float" in str(hints) else str
                group.add_argument(meta["flag"], dest=dest, type=kind, default=None, choices=meta.get("choices"),
                                   help=text)


def overrides(args: argparse.Namespace) -> dict:
    out: dict[str, dict] = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, key = dest.split(".", 1)
            out.setdefault(section, {})[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m device", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the native libraries' INFO and WARNING lines (hidden otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (camera -> faces -> emotions -> screen and/or CSV)")
    add_config_flags(run)
    bench = sub.add_parser("bench", help="per-stage latency (median, p95), end-to-end FPS, and recall and label "
                           "agreement against every-frame detection on one thread")
    add_config_flags(bench)
    bench.add_argument("--frames", type=int, default=300, help="frames to measure (default: 300)")
    bench.add_argument("--warmup", type=int, default=20, help="frames run before measuring (default: 20)")
    bench.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                       help="run the same frames again with every-frame detection on one thread and print "
                            "recall and agreement (default: on; files and the demo only)")
    soak = sub.add_parser("soak", help="run many frames from a looped generated video and report RSS growth")
    add_config_flags(soak)
    soak.add_argument("--frames", type=int, default=100_000, help="frames to run (default: 100000)")
    soak.add_argument("--warmup", type=int, default=500,
                      help="frames before the start RSS is taken (default: 500)")
    models = sub.add_parser("models", help="provision the face-detection models (pinned sha256)")
    models.add_argument("--face-models", "--dir", dest="dir", default="auto",
                        help="destination folder (default: auto, the folder `run` reads: $EMOTION_DEVICE_FACE_MODELS, "
                             "a checkout's models/, else this installation's data folder)")
    models.add_argument("--wheel", help="take the models from this local mediapipe 0.10.21 wheel")
    models.add_argument("--offline", action="store_true", help="skip the official location; use the package index")
    report = sub.add_parser("report", help="plots and an HTML summary of CSV logs (rotated, several runs)")
    report.add_argument("logs", nargs="+", metavar="LOG", help="CSV logs, or folders of rotated logs")
    report.add_argument("--out", required=True, help="folder for index.html and the PNG plots")
    report.add_argument("--tracks", type=int, default=12, help="tracks in the timeline plot: the longest (default: 12)")
    from device.install import add_install_parser
    add_install_parser(sub)
    return parser


def load_config(args: argparse.Namespace) -> cfgmod.Config:
    return cfgmod.load(args.config, overrides(args))


def cmd_run(args: argparse.Namespace) -> int:
    from device import service
    from device.service import SdNotifier, exit_now
    # First, before the heavy imports and the model load: a SIGTERM during start-up exits cleanly.
    signals = service.signals()
    notifier = SdNotifier.from_env()  # does nothing outside systemd
    config = load_config(args)
    notifier.check_watchdog(config.run.no_frame_timeout)
    if signals.stop.is_set():  # asked to stop before anything was opened
        log.info("%s: stopped during start-up", signals.received)
        exit_now(0)
    from device.pipeline import Pipeline
    pipeline = Pipeline(config, notifier, signals.stop)
    try:
        pipeline.run(signals.stop, signals.reload, lambda: load_config(args))
        if signals.received:
            log.info("%s: stopped after the current frame", signals.received)
    finally:
        notifier.stopping()
        try:
            pipeline.close()
        finally:
            notifier.close()
    print(pipeline.summary())
    failure = pipeline.failure()  # rows that are not on disk, a source that ended early
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
    code = failure.exit_code if failure is not None else 0
    if signals.received:  # stopped by systemd or Ctrl-C, with the CSV closed: leave at once
        exit_now(code)
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from device.bench import bench
    config = load_config(args)
    print(bench(config, args.frames, args.warmup, args.reference))
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from device.soak import soak
    print(soak(load_config(args), args.frames, args.warmup))
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from device.install import install
    install(args)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from device.report import report
    print(report(args.logs, args.out, max(1, args.tracks)))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from device.facemodels import provision
    for path in provision(args.dir, args.wheel, online=not args.offline):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    if "run" in (sys.argv[1:] if argv is None else argv)[:2]:  # the daemon: handlers before the parser's imports
        from device import service
        service.signals()
    args = build_parser().parse_args(argv)
    if not args.verbose and args.command in QUIET_COMMANDS:
        from device.native import quiet_native_logs
        quiet_native_logs()
    # Under systemd the journal stamps every line itself (JOURNAL_STREAM is set for journal-bound stderr).
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=stamp + "%(levelname)s %(name)s: %(message)s")
    commands = {"run": cmd_run, "bench": cmd_bench, "soak": cmd_soak, "models": cmd_models, "report": cmd_report,
                "install-service": cmd_install_service}
    try:
        return commands[args.command](args)
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
