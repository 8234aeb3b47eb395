"""``convert evaluate`` and ``training evaluate`` on a folder holding 6 of the model's 7 classes (no neutral).

Predictions stay over all 7 labels; the averaged metrics cover the 6 classes present, checked
against scikit-learn's with ``labels=``.  A folder class the model doesn't know is one error naming it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from tests.conftest import LABELS, copy_subset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "emotion_fer2013.tflite"
SIX = tuple(label for label in LABELS if label != "neutral")


@pytest.fixture(scope="module")
def fer_six(tmp_path_factory) -> Path:
    """FER2013 val faces of 6 classes (no neutral), 25 each: a split dataset with val/ only."""
    return copy_subset(tmp_path_factory.mktemp("fer_six"), 25, splits=("val",), labels=SIX)


def expected_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    present = sorted(set(y.tolist()))
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "f1_macro": skm.f1_score(y, pred, labels=present, average="macro", zero_division=0),
        "precision_macro": skm.precision_score(y, pred, labels=present, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y, pred, labels=present, average="macro", zero_division=0),
        "f1_weighted": skm.f1_score(y, pred, labels=present, average="weighted", zero_division=0),
    }


def check(result: dict, y: np.ndarray, probs: np.ndarray, exact: np.ndarray | None = None) -> None:
    """``exact``: the unrounded probabilities, when ``probs`` were read back from a CSV (ROC AUC ranks them)."""
    pred = probs.argmax(axis=1)
    assert result["n"] == len(y) == 150
    assert result["labels"] == list(LABELS) and result["classes_evaluated"] == list(SIX)
    for key, value in expected_metrics(y, pred).items():
        assert result[key] == pytest.approx(value), key
    assert result["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=list(range(7))).tolist()
    assert result["per_class_accuracy"]["neutral"] is None
    assert result["per_class"]["neutral"]["support"] == 0
    exact = probs if exact is None else exact
    auc = np.mean([skm.roc_auc_score(y == i, exact[:, i]) for i in sorted(set(y.tolist()))])
    assert result["roc_auc_ovr"] == pytest.approx(auc, abs=1e-6)


def test_convert_evaluate_on_six_of_seven_classes(fer_six, fer_root, tmp_path):
    from convert.evaluate import evaluate, predict
    from device.classifier import open_checked
    from training.data import load_folder

    result = evaluate(SHIPPED, fer_six, report_dir=tmp_path / "report")
    # The same images through the unchanged 7-class path: the full val folder's loader, then our rows.
    runtime, manifest = open_checked(SHIPPED, 1, "cpu")
    full = copy_subset(tmp_path / "full", 25, splits=("val",))
    data = load_folder(full / "val", manifest.input_size, manifest.color, manifest.labels)
    keep = data.y != LABELS.index("neutral")
    probs = predict(runtime, manifest, data.x[keep])
    assert len(np.unique(probs.argmax(axis=1))) >= 4  # a real classifier, not a constant
    check(result, data.y[keep], probs)
    assert "neutral" in (tmp_path / "report" / "report.md").read_text()  # the table keeps every label


def test_unknown_folder_class_is_one_error_naming_it(tmp_path):
    data = copy_subset(tmp_path, 3, splits=("val",), labels=("angry", "happy"))
    (data / "val" / "contempt").mkdir()
    (data / "val" / "contempt" / "a.jpg").write_bytes((data / "val" / "angry").iterdir().__next__().read_bytes())
    result = subprocess.run([sys.executable, "-m", "convert", "evaluate", "--model", str(SHIPPED), "--data",
                             str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "'contempt' not among the model's classes" in errors[0], result.stderr


@pytest.mark.slow
def test_training_evaluate_on_six_of_seven_classes(tiny_run, fer_six, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)

    result = cli("evaluate", "--model", tiny_run, "--data", fer_six, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    predicted = cli("predict", "--model", tiny_run, "--data", fer_six / "val", "--out", tmp_path / "p.csv")
    assert predicted.returncode == 0, predicted.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([LABELS.index(row["filename"].split("/")[0]) for row in rows])
    probs = np.array([[float(row[f"p_{name}"]) for name in LABELS] for row in rows])
    # predict's CSV has 6 decimals: a 2-epoch model's nearly equal scores tie there, so ROC AUC is checked
    # against the model's own unrounded output on the same images, in the same order
    from training.data import load_folder_for
    from training.evaluate import load_run, predict_probs

    model, manifest = load_run(tiny_run)
    data = load_folder_for(fer_six / "val", manifest.input_size, manifest.color, manifest.labels)
    assert data.y.tolist() == y.tolist()
    check(metrics, y, probs, exact=predict_probs(model, data.x, manifest.activation))
