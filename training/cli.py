"""``python -m training {fit,evaluate,predict,average,tune,bench}``.

Needs the [train] extra (TensorFlow, Keras, scikit-learn): pip install 'edge-emotion[train]'.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from device.extras import EXIT_CODE, missing_extra
from training.config import CHOICES, FitConfig, read_recipe

HELP = {
    "data": "class-per-folder dataset (optionally split as train/ val/ test/) or FER2013 CSV",
    "out": "run directory to create (written as OUT.incomplete until finished)",
    "val": "separate labelled folder for validation (default: DATA/val, else a stratified split)",
    "val_fraction": "fraction held out for validation when the data has no val split",
    "limit_per_class": "use at most this many images per class (quick looks, smoke tests)",
    "arch": "architecture", "alpha": "MobileNetV2 width multiplier", "input_size": "square input size in pixels",
    "color": "colour mode of the model input", "weights": "backbone weights: none, imagenet (needs internet) or PATH",
    "init": "start from this Keras classifier (e.g. models/emotion_fer2013.keras): all its weights for the same"
            " classes, its backbone under a new head for others; input size and colour default to the model's",
    "activation": "output activation (sigmoid only for 2 classes)", "dropout": "dropout before the classifier",
    "bn_momentum": "BatchNorm moving-average momentum",
    "epochs": "total epochs", "freeze_epochs": "epochs with the backbone frozen before fine-tuning everything",
    "batch_size": "batch size", "optimizer": "optimizer", "learning_rate": "peak learning rate",
    "weight_decay": "AdamW weight decay", "label_smoothing": "label smoothing",
    "schedule": "learning-rate schedule", "warmup_epochs": "linear warm-up epochs (cosine schedule)",
    "early_stopping": "stop after this many epochs without val accuracy gain (0: off)",
    "augment": "random flip, rotation, zoom, shift, brightness, contrast",
    "votes": "FER+ votes CSV (file,neutral,happiness,...,unknown,NF; paths relative to the dataset's root): train "
             "on the 8 expressions ten annotators saw (images whose majority is unknown or not a face left out)",
    "vote_targets": "with --votes: probability (the vote distribution, FER+'s best protocol) or majority (one-hot)",
    "teachers": "distil from this model (.keras or .tflite with its manifest, or an .npz of its probabilities keyed "
                "by file, as scripts/ferplus_teacher.py writes; repeat for an ensemble): their mean "
                "probabilities on the training images, computed once, blend into the targets",
    "distill": "weight of the teachers' probabilities in the targets (the rest is the true label)",
    "swa_epochs": "also average the weights of the last N epochs (SWA; BatchNorm measured again on the training "
                  "images) and keep that model if it beats the best epoch on val (0: off)",
    "class_weights": "loss weights against class imbalance", "mixed_precision": "train in mixed float16",
    "seed": "random seed (split, initialisation, augmentation)",
}


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="TOML file of fit options; flags override it")
    defaults = FitConfig()
    for f in dataclasses.fields(FitConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{HELP[f.name]} (default: {default})"
        if isinstance(default, list):
            parser.add_argument("--" + f.name.rstrip("s"), dest=f.name, action="append", metavar="MODEL", help=text)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            if f.name == "limit_per_class":
                kind = int
            parser.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name), help=text)


def fit_config(args: argparse.Namespace) -> FitConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(FitConfig)
             if getattr(args, f.name) is not None}
    options = {**(read_recipe(args.recipe) if args.recipe else {}), **given}
    if options.get("init") and not {"input_size", "color"} <= options.keys():
        from training import init  # imports Keras: only when --init is given
        model = init.load(options["init"])
        options = {"input_size": model.input_size, "color": model.color, **options}
    return FitConfig.from_dict(options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a classifier and write a run directory")
    add_fit_arguments(fit)

    ev = sub.add_parser("evaluate", help="metrics, report and plots for a run on a labelled folder")
    ev.add_argument("--model", required=True, help="run directory or its model.keras")
    ev.add_argument("--data", required=True, help="labelled class-per-folder (or a split dataset: its val/); its "
                    "classes may be a subset of the model's (metrics over those present)")
    ev.add_argument("--out", help="report folder (default: RUN/eval)")
    ev.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    ev.add_argument("--votes", metavar="CSV", help="FER+ votes: score against the majority of ten annotators (images "
                    "whose majority is unknown or not a face left out), with the cross-entropy against the votes "
                    "and the accuracy against the folder's own labels beside it")

    pr = sub.add_parser("predict", help="CSV of filename,label,probabilities for an unlabelled folder")
    pr.add_argument("--model", required=True, help="run directory or its model.keras")
    pr.add_argument("--data", required=True, help="folder of images")
    pr.add_argument("--out", required=True, help="CSV to write")
    pr.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")

    avg = sub.add_parser("average", help="one model from the mean of several models' weights (model soup, SWA); "
                         "BatchNorm measured again on the training images")
    avg.add_argument("--model", required=True, action="append", help="run directory or .keras with its manifest; "
                     "repeat (at least two, one architecture and class set)")
    avg.add_argument("--data", required=True, help="the training data (its training images set BatchNorm; its "
                     "val split is reported)")
    avg.add_argument("--out", required=True, help="run directory to create")
    avg.add_argument("--weights", help="comma-separated weight per --model (default: equal)")
    avg.add_argument("--votes", metavar="CSV", help="FER+ votes, for models trained on them: the 8 expressions as "
                     "classes, val scored against the majority of ten annotators")

    tune = sub.add_parser("tune", help="KerasTuner search; writes a results table")
    add_fit_arguments(tune)
    tune.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random",
                      help="search strategy (default: random)")
    tune.add_argument("--trials", type=int, default=10, help="trials (random, bayesian; default: 10)")

    bench = sub.add_parser("bench", help="training throughput (images/s) on synthetic data, augmentation on and off")
    bench.add_argument("--arch", choices=CHOICES["arch"], default="mobilenetv2",
                       help="architecture (default: mobilenetv2)")
    bench.add_argument("--alpha", type=float, default=0.5, help="MobileNetV2 width multiplier (default: 0.5)")
    bench.add_argument("--input-size", type=int, default=64, help="square input size in pixels (default: 64)")
    bench.add_argument("--color", choices=CHOICES["color"], default="grayscale",
                       help="colour mode (default: grayscale)")
    bench.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    bench.add_argument("--classes", type=int, default=7, help="number of classes (default: 7)")
    bench.add_argument("--steps", type=int, default=20, help="timed train steps per setting (default: 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per setting (default: 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.data import DataError  # after logging is set up; pulls in numpy and cv2
    try:
        if args.command == "fit":
            from training.fit import fit
            print(fit(fit_config(args)))
        elif args.command == "evaluate":
            from training.evaluate import evaluate_cli
            from training.report import summary_line
            print(summary_line(evaluate_cli(args.model, args.data, args.out, args.tta, args.votes)))
        elif args.command == "predict":
            from training.evaluate import predict_cli
            print(f"wrote {predict_cli(args.model, args.data, args.out, args.tta)} rows to {args.out}")
        elif args.command == "average":
            from training.average import average, valid_weights
            print(average(args.model, args.data, args.out, valid_weights(args.weights), args.votes))
        elif args.command == "tune":
            from training.tune import tune
            print(tune(fit_config(args), args.tuner, args.trials))
        elif args.command == "bench":
            from training.bench import bench, format_results
            cfg = FitConfig.from_dict({"data": "synthetic", "arch": args.arch, "alpha": args.alpha,
                                       "input_size": args.input_size, "color": args.color,
                                       "batch_size": args.batch_size})
            print(format_results(cfg, bench(cfg, args.steps, args.warmup, args.classes), args.warmup))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a [device]-only install: no TensorFlow, Keras or scikit-learn
        line = missing_extra(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
