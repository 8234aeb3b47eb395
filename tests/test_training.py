"""training/: fit, evaluate, predict, tune and bench on tiny models, CPU only, offline.

The tests train MobileNetV2 (alpha 0.35, 32x32) or, where only the plumbing
matters (binary heads, resume), the small baseline CNN, for one or two epochs on
a few dozen generated images.  Tracing MobileNetV2's train step into a
TensorFlow graph takes about 30 s on two busy CPU cores, far longer than the
handful of steps these tests train, so the in-process tests run
``tf.function``s eagerly (the ``eager`` fixture).  ``tiny_run`` (conftest) and
every ``python -m training`` subprocess use compiled graphs, as in production.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from sklearn import metrics as skm

from device import manifest as mf
from training import report
from training.config import FitConfig
from training.data import FER_CSV_LABELS, DataError, load_folder, load_splits

pytestmark = pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly`")

ROOT = Path(__file__).resolve().parents[1]
LABELS = tuple(sorted(FER_CSV_LABELS))  # alphabetical: angry disgust fear happy neutral sad surprise
RUN_FILES = ("model.keras", "manifest.json", "config.json", "data.json", "history.csv", "metrics.json", "report.md",
             "confusion_matrix.png", "training_curves.png")
SYNTHETIC_CLASSES = ("zebra", "apple", "mango")  # created in this order; labels must come out alphabetical


# --- helpers -----------------------------------------------------------------------------------------------------

def make_class_folder(root: Path, classes, per_class: int, size: int = 40, seed: int = 0) -> Path:
    """``root/<class>/*.png``: noise whose brightness depends on the class, so the classes are learnable."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = (rng.integers(0, 60, (size, size)) + 70 * k).astype(np.uint8)
            assert cv2.imwrite(str(folder / f"{name}_{i:03d}.png"), image)
    return root


def tiny_cfg(data: Path, out: Path, **overrides) -> FitConfig:
    base = dict(data=str(data), out=str(out), alpha=0.35, input_size=32, epochs=1, batch_size=16, warmup_epochs=0,
                val_fraction=0.25, seed=1)
    return FitConfig(**{**base, **overrides}).validate()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_complete_run(run: Path, labels: tuple[str, ...], epochs: int) -> dict:
    assert run.is_dir()
    assert not run.with_name(run.name + ".incomplete").exists()
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in ("best.keras", "backup", "train.done.weights.h5"):
        assert not (run / name).exists(), f"leftover {name}"
    for png in ("confusion_matrix.png", "training_curves.png"):
        image = cv2.imread(str(run / png))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert mf.load(run / "manifest.json").labels == labels
    history = read_csv(run / "history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(epochs))
    assert all(0 <= float(row["val_accuracy"]) <= 1 for row in history)
    metrics = json.loads((run / "metrics.json").read_text())
    cm = np.array(metrics["confusion_matrix"])
    assert metrics["labels"] == list(labels) and cm.shape == (len(labels), len(labels))
    assert cm.sum() == metrics["n"]
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert "accuracy" in (run / "report.md").read_text()
    return metrics


# --- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture
def eager():
    """Run tf.functions eagerly for this test (see the module docstring)."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """3 classes x 12 PNGs in a flat class-per-folder tree, plus one corrupt .jpg."""
    root = make_class_folder(tmp_path_factory.mktemp("synthetic"), SYNTHETIC_CLASSES, 12)
    (root / "apple" / "broken.jpg").write_bytes(b"this is not a JPEG \x00\xff" * 10)
    return root


@pytest.fixture(scope="module")
def tiny_predictions(tiny_run, fer_small, tmp_path_factory) -> Path:
    """``python -m training predict`` of ``tiny_run`` over fer_small/val (class sub-folders)."""
    out = tmp_path_factory.mktemp("predict") / "pred.csv"
    result = cli("predict", "--model", tiny_run, "--data", fer_small / "val", "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"wrote {30 * len(LABELS)} rows" in result.stdout
    return out


# --- fit -----------------------------------------------------------------------------------------------------------

def test_fit_writes_complete_run_with_alphabetical_labels(synthetic, tmp_path, eager):
    from training.fit import fit

    out = tmp_path / "run"
    assert fit(tiny_cfg(synthetic, out)) == out
    metrics = assert_complete_run(out, ("apple", "mango", "zebra"), epochs=1)
    data = json.loads((out / "data.json").read_text())
    assert data["skipped_unreadable"] == 1  # broken.jpg
    assert data["labels"] == ["apple", "mango", "zebra"]
    assert data["val"] == {"apple": 3, "mango": 3, "zebra": 3}  # 25% of 12 per class, stratified
    assert data["train"] == {"apple": 9, "mango": 9, "zebra": 9}
    assert metrics["n"] == 9
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 3)
    assert "augment" not in [layer.name for layer in model.layers]  # the shipped model has no augmentation


def test_fer_subset_run_is_complete(tiny_run):
    metrics = assert_complete_run(tiny_run, LABELS, epochs=2)
    data = json.loads((tiny_run / "data.json").read_text())
    assert data["train"] == dict.fromkeys(LABELS, 30) and data["val"] == dict.fromkeys(LABELS, 30)
    assert data["skipped_unreadable"] == 0
    assert metrics["n"] == 30 * len(LABELS)
    assert mf.load(tiny_run / "manifest.json").input_size == 48


def test_corrupt_image_is_skipped_and_counted(synthetic):
    splits = load_splits(synthetic, 32, "grayscale", val_fraction=0.25, seed=1)
    assert splits.skipped == 1
    assert len(splits.train) + len(splits.val) == 36
    assert not any(f.endswith("broken.jpg") for f in splits.train.files + splits.val.files)


def test_interrupted_fit_leaves_incomplete_and_resumes(synthetic, tmp_path, monkeypatch, eager):
    import training.fit as fit_module

    class Interrupted(Exception):
        pass

    class InterruptAfterFirstEpoch(fit_module.EpochTimer):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            raise Interrupted

    out = tmp_path / "run"
    work = tmp_path / "run.incomplete"
    cfg = tiny_cfg(synthetic, out, epochs=2, arch="baseline")
    monkeypatch.setattr(fit_module, "EpochTimer", InterruptAfterFirstEpoch)
    with pytest.raises(Interrupted):
        fit_module.fit(cfg)
    assert not out.exists() and work.is_dir()
    assert not (work / "model.keras").exists()
    assert len(read_csv(work / "history.csv")) == 1
    assert (work / "backup").is_dir()

    monkeypatch.undo()
    assert fit_module.fit(cfg) == out  # the same command again resumes at epoch 2
    assert_complete_run(out, ("apple", "mango", "zebra"), epochs=2)
    assert json.loads((out / "metrics.json").read_text())["training"]["epochs_this_process"] == 1


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_binary_dataset(activation, tmp_path, eager):
    from training.evaluate import evaluate_cli, predict_cli
    from training.fit import fit

    data = make_class_folder(tmp_path / "binary", ("smile", "calm"), 10, seed=3)
    run = fit(tiny_cfg(data, tmp_path / "run", arch="baseline", activation=activation, val_fraction=0.3))
    manifest = mf.load(run / "manifest.json")
    assert manifest.labels == ("calm", "smile") and manifest.activation == activation
    model = keras.models.load_model(run / "model.keras", compile=False)
    assert model.output_shape == (None, 1 if activation == "sigmoid" else 2)

    result = evaluate_cli(str(run), str(data), str(tmp_path / "eval"), tta=False)
    assert result["n"] == 20 and np.array(result["confusion_matrix"]).shape == (2, 2)
    assert result["roc_auc_ovr"] is not None

    assert predict_cli(str(run), str(data), str(tmp_path / "pred.csv"), tta=False) == 20
    rows = read_csv(tmp_path / "pred.csv")
    assert len(rows) == 20
    assert list(rows[0]) == ["filename", "label", "p_calm", "p_smile"]
    for row in rows:
        p = np.array([float(row["p_calm"]), float(row["p_smile"])])
        assert p.min() >= 0 and p.sum() == pytest.approx(1, abs=1e-5)
        assert p[int(row["label"])] == p.max()  # the argmax (probabilities are rounded to 6 decimals)


# --- evaluate and predict ------------------------------------------------------------------------------------------

def test_report_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0, 1])
    probs = rng.dirichlet(np.ones(4), len(y))
    probs[:, 2] *= 0.01  # class 2 is never predicted: precision's zero-division case
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    labels = ("a", "b", "c", "d")
    out = report.compute(y, probs, labels)

    assert out["n"] == len(y) and out["labels"] == list(labels)
    assert out["accuracy"] == pytest.approx(np.mean(pred == y))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], average=average,
                                                         zero_division=0)
        assert out[f"precision_{average}"] == pytest.approx(p)
        assert out[f"recall_{average}"] == pytest.approx(r)
        assert out[f"f1_{average}"] == pytest.approx(f)
    assert out["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], zero_division=0)
    for i, name in enumerate(labels):
        assert out["per_class"][name] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i],
                                                        "support": s[i]})
        assert out["per_class_accuracy"][name] == pytest.approx(r[i])
    assert out["per_class"]["c"]["precision"] == 0
    assert out["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))

    yb = np.array([0, 1, 1, 0, 1, 0])
    pb = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3]])
    binary = report.compute(yb, pb, ("no", "yes"))
    assert binary["accuracy"] == pytest.approx(4 / 6)
    assert binary["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(yb, pb[:, 1]))


def test_predict_cli_writes_one_row_per_image(tiny_predictions, fer_small):
    rows = read_csv(tiny_predictions)
    files = sorted(p.relative_to(fer_small / "val").as_posix() for p in (fer_small / "val").rglob("*.jpg"))
    assert list(rows[0]) == ["filename", "label", *[f"p_{name}" for name in LABELS]]
    assert sorted(row["filename"] for row in rows) == files
    for row in rows:
        p = np.array([float(row[f"p_{name}"]) for name in LABELS])
        assert p.sum() == pytest.approx(1, abs=1e-5)
        assert p[int(row["label"])] == p.max()  # an alphabetical class index, the argmax


def test_evaluate_cli_equals_sklearn_on_the_models_predictions(tiny_run, fer_small, tiny_predictions, tmp_path):
    result = cli("evaluate", "--model", tiny_run, "--data", fer_small, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file() and (tmp_path / "eval" / "report.md").is_file()

    rows = read_csv(tiny_predictions)  # the same model on the same images (fer_small/val)
    y = np.array([LABELS.index(row["filename"].split("/")[0]) for row in rows])
    pred = np.array([int(row["label"]) for row in rows])
    index = list(range(len(LABELS)))
    assert metrics["n"] == len(rows) == 210
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert metrics["f1_macro"] == pytest.approx(skm.f1_score(y, pred, labels=index, average="macro", zero_division=0))
    assert metrics["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=index).tolist()
    for average in ("macro", "weighted"):
        p, r, _, _ = skm.precision_recall_fscore_support(y, pred, labels=index, average=average, zero_division=0)
        assert (metrics[f"precision_{average}"], metrics[f"recall_{average}"]) == pytest.approx((p, r))
    assert f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  n=210" in result.stdout


# --- data loading --------------------------------------------------------------------------------------------------

def test_fer_csv_loader_counts_remap_and_pixels(tmp_path):
    rng = np.random.default_rng(7)
    rows = [(emotion, "Training") for emotion in range(7) for _ in range(2)]  # 14 train rows
    rows += [(4, "PublicTest"), (6, "PublicTest"), (0, "PublicTest")] + [(5, "PrivateTest")]
    images = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in rows]
    path = tmp_path / "fer2013.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for (emotion, usage), image in zip(rows, images):
            writer.writerow([emotion, " ".join(str(v) for v in image.ravel()), usage])

    splits = load_splits(path, 48, "grayscale")
    assert splits.labels == LABELS
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14, 3, 1)
    assert splits.train.counts() == dict.fromkeys(LABELS, 2)
    # FER CSV index -> alphabetical index: 0 angry->0, 4 sad->5, 6 neutral->4, 5 surprise->6
    assert splits.val.y.tolist() == [5, 4, 0]
    assert splits.test.y.tolist() == [6]
    expected = {i: LABELS.index(name) for i, name in enumerate(FER_CSV_LABELS)}
    assert expected == {0: 0, 1: 1, 2: 2, 3: 3, 4: 5, 5: 6, 6: 4}
    assert splits.train.y.tolist() == [expected[e] for e, usage in rows if usage == "Training"]
    assert splits.train.x.shape == (14, 48, 48, 1) and splits.train.x.dtype == np.uint8
    np.testing.assert_array_equal(splits.train.x[:, :, :, 0], np.stack(images[:14]))
    np.testing.assert_array_equal(splits.val.x[:, :, :, 0], np.stack(images[14:17]))


def test_class_folder_labels_are_alphabetical(synthetic):
    ds = load_folder(synthetic, 32, "grayscale")
    assert ds.labels == ("apple", "mango", "zebra")
    assert ds.counts() == {"apple": 12, "mango": 12, "zebra": 12} and ds.skipped == 1
    assert all(Path(f).parent.name == ds.labels[y] for f, y in zip(ds.files, ds.y))
    assert ds.x.shape == (36, 32, 32, 1)


# --- bad input -----------------------------------------------------------------------------------------------------

def _bad_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    empty = tmp / "empty"
    empty.mkdir()
    no_images = make_class_folder(tmp / "no_images", ("a",), 3)
    (no_images / "b").mkdir()
    (no_images / "b" / "notes.txt").write_text("not an image")
    wrong_csv = tmp / "wrong.csv"
    wrong_csv.write_text("label,image\n0,1 2 3 4\n")
    out = tmp / "run"
    return {
        "missing": (["fit", "--data", tmp / "nope", "--out", out], "dataset not found"),
        "empty": (["fit", "--data", empty, "--out", out], "at least 2 class folders"),
        "class_without_images": (["fit", "--data", no_images, "--out", out], "class 'b'"),
        "csv_wrong_columns": (["fit", "--data", wrong_csv, "--out", out], "missing column(s) emotion, pixels"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "class_without_images", "csv_wrong_columns",
                                  "model_data_mismatch"])
def test_bad_input_gives_one_error_line(case, tmp_path, request):
    if case == "model_data_mismatch":  # a 7-class run evaluated on a 2-class folder
        run = request.getfixturevalue("tiny_run")
        data = make_class_folder(tmp_path / "two", ("calm", "smile"), 3)
        args, expected = ["evaluate", "--model", run, "--data", data, "--out", tmp_path / "eval"], "not among the model"
    else:
        args, expected = _bad_cases(tmp_path)[case]
    result = cli(*args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.incomplete").exists()


def test_bad_values_raise_data_error(tmp_path):
    from training.bench import bench
    from training.tune import SearchSpace, tune

    with pytest.raises(DataError, match="dataset not found"):
        tune(tiny_cfg(tmp_path / "nope", tmp_path / "t"), "random", 2)
    with pytest.raises(DataError, match="trials"):
        tune(tiny_cfg(tmp_path, tmp_path / "t"), "random", 0)
    with pytest.raises(DataError, match="tuner must be one of"):
        tune(tiny_cfg(tmp_path, tmp_path / "t"), "grid", 2)
    with pytest.raises(DataError, match="optimizer"):
        SearchSpace(optimizer=("rmsprop",))
    with pytest.raises(DataError, match="steps"):
        bench(tiny_cfg(tmp_path, tmp_path / "b"), steps=0)
    with pytest.raises(DataError, match="averages nothing"):
        FitConfig(data="d", epochs=5, swa_epochs=1).validate()
    with pytest.raises(DataError, match="swa_epochs"):
        FitConfig(data="d", epochs=5, freeze_epochs=2, swa_epochs=4).validate()
    assert not (tmp_path / "t.incomplete").exists()


# --- tune and bench ------------------------------------------------------------------------------------------------

def test_tune_writes_results_sorted_by_val_accuracy(synthetic, tmp_path, eager):
    from training.tune import SearchSpace, tune

    space = SearchSpace(learning_rate=(1e-3, 1e-2), batch_size=(16, 32), optimizer=("adam", "sgd"),
                        dropout=(0.1, 0.3), alpha=(0.35,), input_size=(32,))
    out = tmp_path / "tune"
    assert tune(tiny_cfg(synthetic, out), "random", 2, space=space) == out
    assert not (tmp_path / "tune.incomplete").exists()
    assert (out / "tuner").is_dir()  # KerasTuner's files stay inside the run

    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 and [row["rank"] for row in rows] == ["1", "2"]
    scores = [float(row["val_accuracy"]) for row in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for row in rows:
        assert row["status"] == "COMPLETED" and row["epochs"] == "1" and row["best_epoch"] == "1"
        assert 1e-3 <= float(row["learning_rate"]) <= 1e-2 and row["optimizer"] in ("adam", "sgd")
        assert row["batch_size"] in ("16", "32") and 0.1 <= float(row["dropout"]) <= 0.3
        assert (row["alpha"], row["input_size"]) == ("0.35", "32")
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 3 and f"| 1 | {rows[0]['trial']} | {scores[0]:.4f} |" in table[1]

    best = FitConfig.from_recipe(out / "best.toml", out=str(tmp_path / "refit"))
    assert best.learning_rate == pytest.approx(float(rows[0]["learning_rate"]))
    assert (best.optimizer, best.batch_size, best.data) == (rows[0]["optimizer"], int(rows[0]["batch_size"]),
                                                            str(synthetic))


def test_bench_times_steps_with_and_without_augmentation(tmp_path, eager):
    from training.bench import bench, format_results

    cfg = tiny_cfg(tmp_path, tmp_path / "unused", arch="baseline", batch_size=4)
    results = bench(cfg, steps=3, warmup=1, num_classes=3)
    assert [r.augment for r in results] == [True, False]
    for r in results:
        assert len(r.step_seconds) == 3 and all(t > 0 for t in r.step_seconds)
        assert r.p95 >= r.median > 0
        assert r.images_per_second == pytest.approx(4 / r.median)
    text = format_results(cfg, results, warmup=1)
    assert "batch 4, 3 timed steps after 1 warm-up" in text and "\non " in text and "\noff " in text
