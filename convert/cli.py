"""``python -m convert {quantize,evaluate,bench}``: from a training run to a verified .tflite for the device.

Every failure the user can act on is one ``error: ...`` line on stderr and a
non-zero exit code (78 for model errors, 2 for data errors), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from convert import IO_TYPES, MODES
from device.errors import DeviceError, ModelError
from device.extras import EXIT_CODE, missing_extra

log = logging.getLogger("convert")


def thread_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and the converter's output)")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="convert a Keras run to .tflite and write its manifest (NAME.json) beside it")
    q.add_argument("--model", required=True, help="run directory or its model.keras (manifest.json beside it)")
    q.add_argument("--mode", choices=MODES, default="int8",
                   help="int8: full-integer, calibrated; float16: float16 weights; dynamic: int8 weights, float"
                        " activations; float32: no quantisation (default: int8)")
    q.add_argument("--calibration", metavar="DATA_DIR",
                   help="int8: labelled class-per-folder training data (DATA_DIR/train when it has one)")
    q.add_argument("--samples", type=int, default=200,
                   help="int8: calibration images, drawn stratified by class (default: 200)")
    q.add_argument("--seed", type=int, default=0, help="int8: seed of the calibration draw (default: 0)")
    q.add_argument("--io-type", choices=IO_TYPES, default="int8",
                   help="int8: type of the input and output tensors (default: int8)")
    q.add_argument("--verify", metavar="DATA_DIR",
                   help="labelled class-per-folder data (DATA_DIR/val when it has one): compare the .tflite with"
                        " the Keras model and record the results in the manifest")
    q.add_argument("--max-drop", type=float, default=1.0,
                   help="--verify: fail, writing nothing, when accuracy drops by more than this many percentage"
                        " points (default: 1.0)")
    q.add_argument("--crop-margin", type=float,
                   help="face-crop margin per side, as a fraction of the box (default: the run manifest's)")
    q.add_argument("--crop-square", action=argparse.BooleanOptionalAction, default=None,
                   help="square the face crop before resizing (default: the run manifest's)")
    q.add_argument("--flip-tta", action="store_true",
                   help="fold flip test-time augmentation into the model (two passes per face)")
    q.add_argument("--zoom-tta", type=float, action="append", default=[], metavar="FRACTION",
                   help="also average the centre crop of this fraction of the side, resized back (one more pass"
                        " per face, two with --flip-tta); repeat for more crops, e.g. --zoom-tta 0.9")
    q.add_argument("--votes", metavar="CSV", help="--verify against the FER+ majority of these votes (training/votes.py)"
                   " instead of the folder's labels; --only-if-better then selects on them")
    q.add_argument("--only-if-better", action="store_true",
                   help="with --verify: write --out only if the new model is more accurate than the one there, as"
                        " measured on the same images (its manifest's verification)")
    q.add_argument("--out", required=True, help="the .tflite to write, e.g. models/NAME.tflite")

    ev = sub.add_parser("evaluate", help="metrics of a .tflite in LiteRT on a labelled folder (no TensorFlow needed)")
    ev.add_argument("--model", required=True, help="the .tflite (its NAME.json manifest beside it)")
    ev.add_argument("--data", required=True, help="labelled class-per-folder data (DATA/val when it has one); its "
                    "classes may be a subset of the model's (metrics over those present)")
    ev.add_argument("--keras", metavar="MODEL", help="also run this Keras model (run directory or model.keras) and"
                                                    " report top-1 agreement; needs TensorFlow")
    ev.add_argument("--votes", metavar="CSV", help="FER+ votes: score against the majority of ten annotators, with "
                    "the cross-entropy against the votes and the accuracy against the folder's labels beside it")
    ev.add_argument("--json", metavar="OUT", help="write all metrics to this JSON file")
    ev.add_argument("--report", metavar="DIR", help="write metrics.json, report.md and confusion-matrix/ROC plots")
    ev.add_argument("--threads", type=int, default=1, help="CPU threads for LiteRT (default: 1)")
    ev.add_argument("--batch-size", type=int, default=64, help="images per LiteRT call (default: 64)")

    b = sub.add_parser("bench", help="latency per inference (median, p95), file size and peak memory")
    b.add_argument("--model", required=True, help="the .tflite")
    b.add_argument("--threads", type=thread_counts, default=(1, 2, 4),
                   help="comma-separated CPU thread counts (default: 1,2,4)")
    b.add_argument("--runs", type=int, default=100, help="timed inferences per thread count (default: 100)")
    b.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default: 10)")
    b.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto or PATH.so of a delegate (default: cpu)")
    cs = sub.add_parser("crop-study", help="choose the face crop (margin, vertical shift) by measurement")
    cs.add_argument("--model", required=True, help="the .tflite (its NAME.json manifest beside it)")
    cs.add_argument("--data", required=True, help="labelled class-per-folder data (DATA/val when it has one)")
    cs.add_argument("--margins", default="0,0.05,0.1,0.15,0.2,0.3",
                    help="candidate margins per side, comma-separated (default: 0,0.05,0.1,0.15,0.2,0.3)")
    cs.add_argument("--per-class", type=int, default=100, help="faces per class (default: 100)")
    cs.add_argument("--detector", choices=("short", "full", "auto"), default="short",
                    help="face detector (default: short, which finds upscaled dataset crops best)")
    cs.add_argument("--face-models", default="models", help="folder of the face-detection models")
    cs.add_argument("--votes", metavar="CSV", help="score against the FER+ majority of these votes")
    cs.add_argument("--apply", action="store_true", help="write the best crop and the study into the manifest")
    return parser


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def use_tensorflow_backend() -> None:
    """Keras must run on TensorFlow for the converter; a model saved under JAX or torch loads there too."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        log.info("KERAS_BACKEND=%s ignored: the TFLite converter needs Keras on TensorFlow", backend)
    os.environ["KERAS_BACKEND"] = "tensorflow"


def cmd_quantize(args: argparse.Namespace) -> int:
    from convert import calibration as cal
    from convert.evaluate import labelled_folder, load_labelled
    from convert.quantize import Options, quantize
    from convert.source import KerasModel, resolve, run_manifest
    from training import votes as fer_votes

    if args.votes and not args.verify:
        raise ModelError("--votes scores the --verify data: give --verify DATA_DIR too")
    votes = fer_votes.read(args.votes) if args.votes else None
    opts = Options(args.mode, args.out, args.io_type, args.max_drop, args.crop_margin, args.crop_square,
                   only_if_better=args.only_if_better, votes=votes.lineage() if votes else None)
    # Everything that can be checked without TensorFlow is checked first.
    if any(not 0.5 <= z < 1 for z in args.zoom_tta):
        raise ModelError(f"--zoom-tta takes fractions from 0.5 to below 1, got {args.zoom_tta}")
    model_path = resolve(args.model)
    manifest = run_manifest(model_path)
    images = None
    if args.mode == "int8":
        if not args.calibration:
            raise ModelError("int8 needs calibration images: --calibration DATA_DIR (the training data)")
        images = cal.load(args.calibration, manifest, args.samples, args.seed)
        opts = dataclasses.replace(opts, provenance={"calibration": {
            "data": str(cal.training_folder(args.calibration)), "samples": len(images), "seed": args.seed}})
    elif args.calibration:
        log.info("--calibration is used by int8 only; ignored for %s", args.mode)
    verify_data = load_labelled(args.verify, manifest, votes) if args.verify else None
    use_tensorflow_backend()
    if args.flip_tta:
        opts.provenance["flip_tta"] = True
    if args.zoom_tta:
        opts.provenance["zoom_tta"] = args.zoom_tta
    with KerasModel(model_path, manifest, flip_tta=args.flip_tta, zoom_tta=tuple(args.zoom_tta)) as model:
        result = quantize(model, opts, images, verify_data, labelled_folder(args.verify) if args.verify else None)
    line = f"wrote {args.out} ({result.mode}) and its manifest"
    v = result.verification
    if v:
        line += (f"; {result.mode} accuracy {v['accuracy']:.4f} vs Keras {v['keras_accuracy']:.4f}"
                 f" (drop {v['accuracy_drop_pp']:.2f} pp), top-1 agreement {v['agreement_with_keras']:.4f}"
                 f" on {v['n']} images")
    print(line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from convert.evaluate import evaluate, summary
    from device.manifest import write_atomic

    if args.keras:
        use_tensorflow_backend()
    result = evaluate(args.model, args.data, args.keras, args.threads, args.batch_size, args.report, args.votes)
    if args.json:
        write_atomic(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    print(summary(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from convert.bench import bench, format_table

    print(format_table(bench(args.model, args.threads, args.runs, args.warmup, args.accelerator)))
    return 0


def cmd_crop_study(args: argparse.Namespace) -> int:
    from convert.cropstudy import apply, crop_study, format_study

    try:
        margins = [float(m) for m in args.margins.split(",")]
    except ValueError:
        raise ModelError(f"--margins takes numbers separated by commas, got {args.margins!r}") from None
    result = crop_study(args.model, args.data, margins, args.per_class, args.detector, args.face_models,
                        votes=args.votes)
    print(format_study(result))
    if args.apply:
        crop = apply(args.model, result)
        print(f"manifest updated: crop margin {crop.margin}, shift_y {crop.shift_y}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    commands = {"quantize": cmd_quantize, "evaluate": cmd_evaluate, "bench": cmd_bench,
                "crop-study": cmd_crop_study}
    try:
        return commands[args.command](args)
    except DeviceError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:  # evaluate's metrics need scikit-learn, quantize TensorFlow: [train]
        line = missing_extra(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_CODE
    except Exception as exc:
        # training.data (OpenCV, scikit-learn) is imported only by the commands that read images; bench on a
        # device may run without it, and then no DataError can have been raised.
        data = sys.modules.get("training.data")
        if data is None or not isinstance(exc, data.DataError):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
