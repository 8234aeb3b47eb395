"""``training average``: the mean of several models' weights, with BatchNorm measured again on the training images."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from device import manifest as mf
from tests.test_training import cli
from tests.test_training_init import backbone
from training.average import average
from training.data import load_folder


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """tiny_run and a copy whose weights were moved by noise: two models of one architecture."""
    other = tmp_path_factory.mktemp("other") / "tiny_moved"
    shutil.copytree(tiny_run, other)
    model = keras.models.load_model(other / "model.keras", compile=False)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) if w.ndim > 1 else w
                       for w in model.get_weights()])
    model.save(other / "model.keras")
    return tiny_run, other


def test_weights_are_the_mean_and_batchnorm_is_the_data_s(two_runs, fer_small, tmp_path):
    a, b = (keras.models.load_model(run / "model.keras", compile=False) for run in two_runs)
    out = average([str(r) for r in two_runs], str(fer_small), str(tmp_path / "soup"))
    soup = keras.models.load_model(out / "model.keras", compile=False)
    for w, wa, wb in zip(soup.get_layer("predictions").get_weights(), a.get_layer("predictions").get_weights(),
                         b.get_layer("predictions").get_weights()):
        np.testing.assert_allclose(w, (wa + wb) / 2, atol=1e-6)
    conv = backbone(soup).get_layer("Conv1")
    for w, wa, wb in zip(conv.get_weights(), backbone(a).get_layer("Conv1").get_weights(),
                         backbone(b).get_layer("Conv1").get_weights()):
        np.testing.assert_allclose(w, (wa + wb) / 2, atol=1e-6)

    # The first BatchNorm follows the first convolution only, so its statistics are that convolution's
    # output over the training images (fer_small's 210 fit in one batch: mean and variance over all of them).
    train = load_folder(fer_small / "train", 48, "grayscale")
    base = backbone(soup)
    features = keras.Model(base.inputs, base.get_layer("Conv1").output)(train.x.astype("float32") / 127.5 - 1.0)
    features = np.asarray(features, dtype="float64")
    bn = base.get_layer("bn_Conv1")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), features.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), features.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    assert bn.momentum == pytest.approx(backbone(a).get_layer("bn_Conv1").momentum)  # restored

    manifest = mf.load(out / "manifest.json")
    val = load_folder(fer_small / "val", 48, "grayscale")
    predicted = soup.predict(val.x.astype("float32"), verbose=0).argmax(axis=1)
    assert manifest.source["float_val_accuracy"] == pytest.approx(accuracy_score(val.y, predicted), abs=1e-4)
    assert [p["model"] for p in manifest.source["averaged"]] == [str(r / "model.keras") for r in two_runs]
    assert manifest.source["batchnorm_images"] == len(train) and manifest.labels == val.labels
    assert (out / "metrics.json").is_file() and not Path(str(out) + ".incomplete").exists()


def test_batchnorm_over_several_batches_is_weighted_by_images(tiny_run, fer_small):
    from training.average import recompute_batchnorm

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    x = load_folder(fer_small / "train", 48, "grayscale").x.astype("float32")
    recompute_batchnorm(model, x, batch_size=64)  # 210 images: batches of 64, 64, 64 and 18
    base = backbone(model)
    features = np.asarray(keras.Model(base.inputs, base.get_layer("Conv1").output)(x / 127.5 - 1.0), "float64")
    np.testing.assert_allclose(np.asarray(base.get_layer("bn_Conv1").moving_mean), features.mean(axis=(0, 1, 2)),
                               atol=1e-4)


@pytest.mark.parametrize("case", ["one", "classes", "architecture", "weights", "exists"])
def test_unusable_input_gives_one_error_line(case, two_runs, fer_small, tmp_path):
    three = tmp_path / "three"
    shutil.copytree(two_runs[1], three)
    manifest = mf.load(three / "manifest.json")
    mf.save(manifest.replace(labels=("a", "b", "c", "d", "e", "f", "g")), three / "manifest.json")
    small = tmp_path / "small"
    small.mkdir()
    image = keras.Input((48, 48, 1))
    dense = keras.layers.Dense(7, name="predictions")(keras.layers.Flatten()(image))
    keras.Model(image, dense).save(small / "model.keras")
    shutil.copy(two_runs[0] / "manifest.json", small / "manifest.json")
    out = tmp_path / "soup"
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    models, extra, expected = {
        "one": ([two_runs[0]], [], "at least two"),
        "classes": ([two_runs[0], three], [], "has classes"),
        "architecture": ([two_runs[0], small], [], "not the same architecture"),
        "weights": (list(two_runs), ["--weights", "1,x"], "comma-separated"),
        "exists": (list(two_runs), [], "already exists"),
    }[case]
    result = cli("average", *[a for m in models for a in ("--model", m)], "--data", fer_small, "--out", out, *extra)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (out / "keep.txt").read_text() == "mine" if case == "exists" else not out.exists()
    assert not Path(str(out) + ".incomplete").exists()


def test_fit_with_swa_keeps_the_better_of_the_average_and_the_best_epoch(fer_small, tmp_path):
    from training.config import FitConfig
    from training.fit import fit

    cfg = FitConfig(data=str(fer_small), out=str(tmp_path / "swa"), alpha=0.35, input_size=48, epochs=3,
                    batch_size=32, warmup_epochs=0, seed=3, swa_epochs=2)
    run = fit(cfg)
    swa = mf.load(run / "manifest.json").source["swa"]
    assert swa["epochs"] == 2 and not (run / "snapshots").exists()
    better = max(swa["val_accuracy"], swa["best_epoch_val_accuracy"])
    assert swa["kept"] == ("swa" if swa["val_accuracy"] > swa["best_epoch_val_accuracy"] else "best epoch")
    val = load_folder(fer_small / "val", 48, "grayscale")
    model = keras.models.load_model(run / "model.keras", compile=False)
    predicted = model.predict(val.x.astype("float32"), verbose=0).argmax(axis=1)
    assert accuracy_score(val.y, predicted) == pytest.approx(better, abs=1e-4)
    assert mf.load(run / "manifest.json").source["float_val_accuracy"] == pytest.approx(better, abs=1e-4)


def test_swa_is_the_mean_of_the_snapshots(tiny_run, fer_small, tmp_path):
    from training.average import swa

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    first = [np.asarray(w) for w in model.get_layer("predictions").get_weights()]
    model.save_weights(tmp_path / "a.weights.h5")
    model.get_layer("predictions").set_weights([w + 1.0 for w in first])
    model.save_weights(tmp_path / "b.weights.h5")
    x = load_folder(fer_small / "train", 48, "grayscale").x
    swa(model, [tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"], x)
    for w, w0 in zip(model.get_layer("predictions").get_weights(), first):
        np.testing.assert_allclose(w, w0 + 0.5, atol=1e-6)
