"""``training fit --init``: warm restarts, transfer to other classes, and the errors for unusable models."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from device import manifest as mf
from tests.conftest import copy_subset
from tests.test_training import LABELS, cli, read_csv

THREE = ("angry", "happy", "surprise")


def layer_weights(model: keras.Model, name: str) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_layer(name).get_weights()]


def backbone(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def test_transfer_to_three_classes_keeps_the_backbone(tiny_run, tmp_path):
    """1 epoch on a 3-class FER2013 subset with the default warm-up (epochs 1 used to be refused)."""
    data = copy_subset(tmp_path / "three", 20, labels=THREE)
    out = tmp_path / "run3"
    result = cli("fit", "--data", data, "--init", tiny_run / "model.keras", "--epochs", 1, "--freeze-epochs", 1,
                 "--batch-size", 16, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = mf.load(out / "manifest.json")
    assert manifest.labels == THREE
    assert (manifest.input_size, manifest.color) == (48, "grayscale")  # taken from the --init model
    parent = manifest.source["parent"]
    assert parent["mode"] == "new head" and parent["sha256"] == mf.sha256_file(tiny_run / "model.keras")
    assert manifest.source["epochs_added"] == 1 and manifest.source["recipe"]["init"].endswith("model.keras")
    assert len(read_csv(out / "history.csv")) == 1

    new = keras.models.load_model(out / "model.keras", compile=False)
    old = keras.models.load_model(tiny_run / "model.keras", compile=False)
    assert new.output_shape == (None, 3)
    # The backbone was frozen for the one epoch, so it must be the parent's, weight for weight.
    new_base, old_base = backbone(new), backbone(old)
    assert len(new_base.weights) == len(old_base.weights) > 100
    for a, b in zip(new_base.weights, old_base.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == list(THREE) and metrics["n"] == 3 * 20


def test_warm_restart_keeps_every_weight_including_the_head(tiny_run, fer_small, tmp_path):
    out = tmp_path / "again"
    result = cli("fit", "--data", fer_small, "--init", tiny_run, "--epochs", 1, "--batch-size", 32,
                 "--optimizer", "adam", "--learning-rate", 1e-12, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = mf.load(out / "manifest.json")
    assert manifest.labels == LABELS and manifest.source["parent"]["mode"] == "warm restart"
    new = keras.models.load_model(out / "model.keras", compile=False)
    old = keras.models.load_model(tiny_run / "model.keras", compile=False)
    for a, b in zip(layer_weights(new, "predictions"), layer_weights(old, "predictions")):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_warm_restart_at_a_larger_input_keeps_every_weight(tiny_run, fer_small, tmp_path):
    """A 48-px model restarted at 64 px: the same weights, rebuilt for the larger input (no new head)."""
    out = tmp_path / "larger"
    result = cli("fit", "--data", fer_small, "--init", tiny_run, "--input-size", 64, "--epochs", 1,
                 "--batch-size", 32, "--optimizer", "adam", "--learning-rate", 1e-12, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = mf.load(out / "manifest.json")
    assert manifest.input_size == 64 and manifest.labels == LABELS
    assert manifest.source["parent"]["mode"] == "warm restart" and manifest.source["parent"]["input_size"] == 48
    new = keras.models.load_model(out / "model.keras", compile=False)
    old = keras.models.load_model(tiny_run / "model.keras", compile=False)
    assert new.input_shape == (None, 64, 64, 1) and old.input_shape == (None, 48, 48, 1)
    assert len(new.weights) == len(old.weights)
    for a, b in zip(layer_weights(new, "predictions"), layer_weights(old, "predictions")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(backbone(new).weights, backbone(old).weights):
        if "moving" not in a.path:  # BatchNorm statistics follow the new input's batches; weights can't move
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("case", ["missing", "not_keras", "colour"])
def test_unusable_init_model_gives_one_error_line(case, tiny_run, fer_small, tmp_path):
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("not a model")
    init, extra, expected = {
        "missing": (tmp_path / "nope.keras", [], "no such file"),
        "not_keras": (not_keras, [], "not a Keras model"),
        "colour": (tiny_run / "model.keras", ["--color", "rgb"], "takes grayscale images, but the data is loaded as 48x48 rgb"),
    }[case]
    out = tmp_path / "run"
    result = cli("fit", "--data", fer_small, "--init", init, "--out", out, *extra)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not Path(str(out) + ".incomplete").exists()
