"""FER+ votes (training/votes.py): reading, the paper's protocols, bad files, and training and evaluating on them."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from device import manifest as mf
from training import distill, votes as V
from training.data import DataError, Dataset, load_folder

from .conftest import FER, ROOT

VOTES = FER / "ferplus_votes.csv"
HEADER = "file," + ",".join(V.COLUMNS) + "\n"


@pytest.fixture(scope="module")
def votes() -> V.Votes:
    if not VOTES.is_file():
        pytest.skip(f"FER+ votes not found at {VOTES}")
    return V.read(VOTES)


def independent_majority(path: Path) -> dict[str, str]:
    """The FER+ majority per file, straight from the CSV with the csv module (first column wins a tie)."""
    names = {"anger": "angry", "happiness": "happy", "sadness": "sad"}
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            counts = [int(row[c]) for c in V.COLUMNS]
            top = V.COLUMNS[counts.index(max(counts))]
            out[row["file"]] = names.get(top, top)
    return out


def test_labels_follow_the_projects_alphabetical_convention():
    assert V.LABELS == ("angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def test_the_real_votes_give_the_readmes_figures(votes):
    assert len(votes.rows) == 32139 and votes.depth == 3
    assert votes.sha256 == hashlib.sha256(VOTES.read_bytes()).hexdigest()
    majority = independent_majority(VOTES)
    keys = list(votes.rows)
    ours = V.majority_labels(np.stack([votes.rows[k] for k in keys]))
    usable = V.usable(np.stack([votes.rows[k] for k in keys]))
    for key, label, ok in zip(keys, ours, usable):
        assert (V.LABELS[label] if ok else majority[key]) == majority[key]
    # The README: the FER2013 label equals the FER+ majority for 62.6 % of val/ (over all of its files).
    val = [k for k in keys if k.startswith("val/")]
    same = np.mean([k.split("/")[1] == majority[k] for k in val])
    assert same == pytest.approx(0.626, abs=0.003)


def test_majority_ties_unknown_and_the_distribution():
    counts = np.array([
        # neutral happy surprise sad anger disgust fear contempt unknown NF
        [4, 0, 0, 4, 0, 0, 0, 0, 2, 0],  # a tie: the first column in FER+'s order (neutral) wins
        [1, 0, 0, 0, 2, 0, 0, 0, 7, 0],  # unknown: left out
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: left out
        [0, 1, 0, 0, 0, 0, 0, 6, 3, 0],  # contempt
    ])
    assert V.usable(counts).tolist() == [True, False, False, True]
    labels = V.majority_labels(counts)
    assert V.LABELS[labels[0]] == "neutral" and V.LABELS[labels[3]] == "contempt"
    dist = V.distributions(counts)
    assert dist[0][V.LABELS.index("neutral")] == pytest.approx(0.5)
    assert dist[0][V.LABELS.index("sad")] == pytest.approx(0.5)
    assert dist[3][V.LABELS.index("contempt")] == pytest.approx(6 / 7)  # unknown dropped, then renormalised
    np.testing.assert_allclose(dist[[0, 1, 3]].sum(axis=1), 1.0, rtol=1e-6)


def test_attach_relabels_counts_skips_and_keeps_the_folder_labels(fer_small, votes, caplog):
    data = load_folder(fer_small / "train", 32, "grayscale")
    extra = fer_small / "train" / "happy" / "Training_no_votes.jpg"
    extra.write_bytes((fer_small / "train" / "happy" / sorted(p.name for p in (fer_small / "train" / "happy")
                                                                 .iterdir())[0]).read_bytes())
    try:
        data = load_folder(fer_small / "train", 32, "grayscale")
    finally:
        extra.unlink()
    with caplog.at_level(logging.WARNING):
        voted = V.attach(data, votes, "train")
    majority = independent_majority(VOTES)
    missing = sum("/".join(Path(f).parts[-3:]) not in majority for f in data.files)
    assert missing >= 1  # the copy, and FER2013 files that FER+ dropped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{missing} of {len(data)} images have no votes" in warnings[0]
    assert voted.labels == V.LABELS and voted.folder_labels == data.labels
    counts = voted.vote_counts
    assert counts["without_votes"] == missing and counts["kept"] + counts["unknown_or_nf"] + missing == len(data)
    for file, y, fy in zip(voted.files, voted.y, voted.folder_y):
        key = "/".join(Path(file).parts[-3:])
        assert V.LABELS[y] == majority[key] and data.labels[fy] == key.split("/")[1]
    row = votes.rows[key]
    np.testing.assert_allclose(voted.votes[-1], V.distributions(row[None])[0])


def bad_votes(case: str, fer_small: Path) -> tuple[str, str]:
    good = "train/angry/" + sorted(p.name for p in (fer_small / "train" / "angry").iterdir())[0]
    moved = "train/fear/" + sorted(p.name for p in (fer_small / "train" / "happy").iterdir())[0]  # another class
    return {
        "columns": ("file,neutral,happy\n" + f"{good},1,2\n", "row 1"),
        "zero": (HEADER + f"{good},0,0,0,0,0,0,0,0,0,0\n", "row 2"),
        "negative": (HEADER + f"{good},11,0,0,0,-1,0,0,0,0,0\n", "row 2"),
        "not_a_number": (HEADER + f"{good},1,0,0,0,x,0,0,0,0,0\n", "row 2"),
        "duplicate": (HEADER + f"{good},1,0,0,0,9,0,0,0,0,0\n{good},1,0,0,0,9,0,0,0,0,0\n", "row 3"),
        "other_files": (HEADER + f"{good},1,0,0,0,9,0,0,0,0,0\n{moved},1,0,0,0,9,0,0,0,0,0\n", "row 3"),
    }[case]


@pytest.mark.parametrize("case", ["columns", "negative", "not_a_number", "duplicate"])
def test_bad_votes_raise_a_data_error_naming_file_and_row(case, fer_small, tmp_path):
    text, where = bad_votes(case, fer_small)
    path = tmp_path / "votes.csv"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        V.read(path)
    assert str(error.value).startswith(f"{path} {where}:")


@pytest.mark.parametrize("case", ["zero", "other_files"])
def test_bad_votes_give_one_error_line_and_exit_2(case, fer_small, tmp_path):
    text, where = bad_votes(case, fer_small)
    path = tmp_path / "votes.csv"
    path.write_text(text)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "training", "fit", "--data", fer_small, "--votes", path,
                             "--out", out, "--epochs", "1", "--input-size", "32", "--alpha", "0.35"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and f"{path} {where}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not out.with_name("run.incomplete").exists()


def test_votes_that_match_no_image_are_an_error(fer_small, tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text(HEADER + "train/angry/Training_0.jpg,1,0,0,0,9,0,0,0,0,0\n")
    data = load_folder(fer_small / "val", 32, "grayscale")
    with pytest.raises(DataError, match="none of its 1 rows matches"):
        V.attach(data, V.read(path), "val")


def test_metrics_equal_an_independent_computation():
    rng = np.random.default_rng(0)
    folder_labels = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    n = 200
    counts = np.zeros((n, len(V.COLUMNS)), dtype=np.int32)
    for i in range(n):
        counts[i, rng.integers(0, 8)] += 6
        counts[i, rng.integers(0, 10)] += 4
    keep = V.usable(counts)
    counts = counts[keep]
    probs = rng.dirichlet(np.ones(8), len(counts))
    folder_y = rng.integers(0, 7, len(counts))
    data = Dataset(np.zeros((len(counts), 8, 8, 1), np.uint8), V.majority_labels(counts), V.LABELS,
                   votes=V.distributions(counts), folder_y=folder_y, folder_labels=folder_labels)
    out = V.metrics(data, probs)
    dist = counts[:, V.LABEL_COLUMNS] / counts[:, V.LABEL_COLUMNS].sum(1, keepdims=True)
    assert out["votes_cross_entropy"] == pytest.approx(np.mean([-(d * np.log(p)).sum() for d, p in zip(dist, probs)]))
    seven = probs[:, [V.LABELS.index(name) for name in folder_labels]]
    assert out["folder_label_accuracy"] == pytest.approx(skm.accuracy_score(folder_y, seven.argmax(1)))
    assert out["folder_labels"] == sorted(folder_labels)


def test_a_teacher_saved_as_probabilities_is_matched_by_file(fer_small, tmp_path):
    data = load_folder(fer_small / "train", 32, "grayscale")
    keys = ["/".join(Path(f).parts[-3:]) for f in data.files][::-1]  # another order than the data's
    probs = np.random.default_rng(1).dirichlet(np.ones(len(data.labels)), len(keys)).astype("float32")
    path = tmp_path / "teacher.npz"
    np.savez(path, keys=np.array(keys, dtype="S"), labels=np.array(data.labels), probs=probs)
    got = distill.teacher_probs(path, data)
    np.testing.assert_array_equal(got, probs[::-1])
    np.savez(path, keys=np.array(keys[1:], dtype="S"), labels=np.array(data.labels), probs=probs[1:])
    with pytest.raises(DataError, match=f"no probabilities for 1 of the {len(data)} training images"):
        distill.teacher_probs(path, data)
    np.savez(path, keys=np.array(keys), labels=np.array(V.LABELS), probs=np.zeros((len(keys), 8)))
    with pytest.raises(DataError, match="has classes"):
        distill.teacher_probs(path, data)


def test_fit_on_votes_trains_on_the_distribution_and_records_the_lineage(fer_small, votes, tmp_path):
    from training.config import FitConfig
    from training.fit import fit, train_targets

    cfg = FitConfig(data=str(fer_small), out=str(tmp_path / "run"), votes=str(VOTES), alpha=0.35, input_size=32,
                    epochs=1, batch_size=32, warmup_epochs=0, seed=1).validate()
    data = V.attach(load_folder(fer_small / "train", 32, "grayscale"), votes)
    np.testing.assert_array_equal(train_targets(cfg, data, 8), data.votes)
    majority = train_targets(FitConfig(**{**cfg.to_dict(), "vote_targets": "majority"}), data, 8)
    assert (majority.argmax(1) == data.y).all() and set(np.unique(majority)) == {0.0, 1.0}

    run = fit(cfg)
    manifest = mf.load(run / "manifest.json")
    assert manifest.labels == V.LABELS
    lineage = manifest.source["votes"]
    assert lineage["sha256"] == votes.sha256 and lineage["targets"] == "probability"
    assert lineage["train"]["kept"] == len(data)
    report = json.loads((run / "metrics.json").read_text())
    assert report["labels"] == list(V.LABELS) and report["n"] == report["vote_counts"]["kept"]
    assert 0 < report["votes_cross_entropy"] < 10 and 0 <= report["folder_label_accuracy"] <= 1
    assert "against the FER+ majority" in (run / "report.md").read_text()


def test_convert_evaluate_on_votes_equals_an_independent_computation(fer_small, tmp_path):
    """The shipped FER+ model in LiteRT on fer_small/val, scored by `convert evaluate --votes` and here with
    LiteRT, the csv module and scikit-learn."""
    from device.preprocess import to_model_image
    from tests.test_convert import run_litert

    model = ROOT / "models" / "emotion_ferplus.tflite"
    out = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "convert", "evaluate", "--model", model, "--data", fer_small,
                             "--votes", VOTES, "--json", out], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(out.read_text())

    size = json.loads(model.with_suffix(".json").read_text())["input_size"]
    majority = independent_majority(VOTES)
    rows = {}
    with open(VOTES, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["file"]] = np.array([int(row[c]) for c in V.COLUMNS], dtype=float)
    images, truth, folder, dists = [], [], [], []
    for path in sorted((fer_small / "val").glob("*/*.jpg")):
        key = "/".join(path.parts[-3:])
        if key not in majority or majority[key] in ("unknown", "NF"):
            continue
        image = to_model_image(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), size, "grayscale")
        images.append(image)
        truth.append(V.LABELS.index(majority[key]))
        folder.append(path.parent.name)
        counts = rows[key][[V.COLUMNS.index(c) for c in ("anger", "contempt", "disgust", "fear", "happiness",
                                                          "neutral", "sadness", "surprise")]]
        dists.append(counts / counts.sum())
    probs, _ = run_litert(model, np.stack(images))
    probs = probs / probs.sum(1, keepdims=True)  # int8 outputs sum to 1 within a few steps: the device renormalises
    pred = probs.argmax(1)
    assert got["n"] == len(truth) and got["labels"] == list(V.LABELS)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(truth, pred, labels=sorted(set(truth)),
                                                                  average="macro", zero_division=0))
    assert got["confusion_matrix"] == skm.confusion_matrix(truth, pred, labels=range(8)).tolist()
    assert got["votes_cross_entropy"] == pytest.approx(
        np.mean([-(d * np.log(np.clip(p, 1e-7, 1))).sum() for d, p in zip(dists, probs)]), rel=1e-4)
    seven = [V.LABELS.index(n) for n in sorted(set(folder))]
    folder_pred = [V.LABELS[seven[i]] for i in probs[:, seven].argmax(1)]
    assert got["folder_label_accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(folder_pred, folder)]))
    assert got["accuracy"] > 0.6  # the shipped model, not a constant predictor
    assert "against the votes' majority" in result.stdout


def test_only_if_better_compares_votes_with_votes():
    """--only-if-better: a model verified on other votes (or none) was not measured on the same targets."""
    from convert.quantize import check_beats
    from device.errors import ModelError

    model = ROOT / "models" / "emotion_ferplus.tflite"
    shipped = mf.load(mf.manifest_path_for(model)).verification
    worse = {**shipped, "accuracy": shipped["accuracy"] - 0.01}
    with pytest.raises(ModelError, match="does not beat"):
        check_beats(model, worse)
    check_beats(model, {**worse, "votes": {**shipped["votes"], "sha256": "0" * 64}})  # other votes: not comparable
    check_beats(model, {**shipped, "accuracy": shipped["accuracy"] + 0.001})


def test_a_seven_class_model_is_scored_on_the_images_whose_majority_it_can_name(votes):
    seven = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    data = load_folder(FER / "val", 16, "grayscale")
    eight, only_seven = V.attach(data, votes), V.attach(data, votes, "val", seven)
    contempt = int((eight.y == V.LABELS.index("contempt")).sum())
    assert contempt == 26  # val/'s contempt majorities
    assert only_seven.vote_counts["kept"] == len(eight) - contempt
    assert only_seven.vote_counts.get("not_a_model_class", 0) == contempt
    assert only_seven.labels == seven
    keep = eight.y != V.LABELS.index("contempt")
    assert [seven[i] for i in only_seven.y] == [V.LABELS[i] for i in eight.y[keep]]
    np.testing.assert_allclose(only_seven.votes.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(DataError, match="not among the FER\\+ expressions"):
        V.attach(data, votes, "val", ("calm", "smile"))


def test_average_on_votes_reads_the_data_as_fit_does(fer_small, votes, tmp_path):
    """`training average --votes` on the shipped FER+ model twice: its weights, 8 classes, val scored against the
    majority of the ten annotators (scikit-learn on the soup's own predictions)."""
    import keras
    from sklearn.metrics import accuracy_score

    from tests.test_training import cli

    model = ROOT / "models" / "emotion_ferplus.keras"
    out = tmp_path / "soup"
    result = cli("average", "--model", model, "--model", model, "--data", fer_small, "--votes", VOTES, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    soup = keras.models.load_model(out / "model.keras", compile=False)
    shipped = keras.models.load_model(model, compile=False)
    np.testing.assert_allclose(soup.get_layer("predictions").get_weights()[0],
                               shipped.get_layer("predictions").get_weights()[0], atol=1e-6)
    manifest = mf.load(out / "manifest.json")
    assert manifest.labels == V.LABELS and manifest.source["votes"]["sha256"] == votes.sha256
    val = V.attach(load_folder(fer_small / "val", manifest.input_size, "grayscale"), votes)
    predicted = soup.predict(val.x.astype("float32"), verbose=0).argmax(axis=1)
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"] == len(val) and report["labels"] == list(V.LABELS)
    assert manifest.source["float_val_accuracy"] == pytest.approx(accuracy_score(val.y, predicted), abs=1e-4)
    assert report["accuracy"] > 0.6  # the shipped model's weights, not a constant predictor
