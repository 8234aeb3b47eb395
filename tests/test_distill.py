"""Distillation: the teachers' mean probabilities, computed once and cached, blended into the targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device import manifest as mf
from tests.conftest import ROOT, copy_subset
from training import distill
from training.data import DataError, load_folder

SHIPPED = ROOT / "models" / "emotion_fer2013.tflite"


def test_soft_targets_are_the_teachers_mean_and_are_cached(tiny_run, fer_small, tmp_path, monkeypatch):
    from training.evaluate import load_run, predict_probs

    data = load_folder(fer_small / "train", 48, "grayscale")
    model, manifest = load_run(tiny_run)
    expected = predict_probs(model, data.x, manifest.activation, tta=True)  # a Keras teacher sees the flip too
    cache = tmp_path / "soft.npz"
    probs = distill.soft_targets([str(tiny_run), str(tiny_run / "model.keras")], data, cache)
    assert probs.shape == (len(data), 7)
    np.testing.assert_allclose(probs, expected, atol=1e-5)  # the mean of two copies of one teacher
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    def no_teacher(*_):
        raise AssertionError("recomputed")

    monkeypatch.setattr(distill, "teacher_probs", no_teacher)
    np.testing.assert_array_equal(distill.soft_targets([str(tiny_run), str(tiny_run / "model.keras")], data, cache),
                                  probs)  # a resumed run reads the cache
    other = load_folder(fer_small / "val", 48, "grayscale")
    with pytest.raises(AssertionError, match="recomputed"):  # other images: the cache does not apply
        distill.soft_targets([str(tiny_run), str(tiny_run / "model.keras")], other, cache)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped model is missing")
def test_a_tflite_teacher_gives_what_convert_evaluate_gives(fer_small):
    from convert.evaluate import predict
    from device.classifier import open_checked

    data = load_folder(fer_small / "val", 64, "grayscale")
    runtime, manifest = open_checked(SHIPPED, 1, "cpu")
    np.testing.assert_allclose(distill.teacher_probs(SHIPPED, data), predict(runtime, manifest, data.x), atol=1e-6)


def test_blend_weights_the_teachers_against_the_true_label():
    one_hot = np.array([[1.0, 0.0, 0.0]])
    teacher = np.array([[0.2, 0.5, 0.3]])
    np.testing.assert_allclose(distill.blend(one_hot, teacher, 0.5), [[0.6, 0.25, 0.15]])
    np.testing.assert_allclose(distill.blend(one_hot, teacher, 0.0), one_hot)


def test_a_teacher_of_another_size_sees_the_training_files_at_its_own_size(tiny_run, fer_small):
    from training.evaluate import load_run, predict_probs

    model, manifest = load_run(tiny_run)
    at_48 = load_folder(fer_small / "val", 48, "grayscale")
    expected = predict_probs(model, at_48.x, manifest.activation, tta=True)
    got = distill.teacher_probs(tiny_run, load_folder(fer_small / "val", 64, "grayscale"))  # a 64 px student's data
    assert got.shape == (len(at_48), len(manifest.labels))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_teacher_for_other_classes_or_without_images_to_re_read_is_refused(tiny_run, fer_small, tmp_path):
    three = copy_subset(tmp_path / "three", 5, splits=("train",), labels=("angry", "happy", "sad"))
    with pytest.raises(DataError, match="classes"):
        distill.teacher_probs(tiny_run, load_folder(three / "train", 48, "grayscale"))
    no_files = load_folder(fer_small / "val", 64, "grayscale")
    no_files.files = []  # as from a FER2013 .csv
    with pytest.raises(DataError, match="takes 48 px.*no image files"):
        distill.teacher_probs(tiny_run, no_files)
    with pytest.raises(DataError, match="does not exist"):
        distill.teacher_probs(tmp_path / "nope.keras", load_folder(three / "train", 48, "grayscale"))


def test_fit_with_teachers_records_them_and_leaves_no_cache(tiny_run, fer_small, tmp_path):
    from training.config import FitConfig
    from training.fit import fit

    out = fit(FitConfig(data=str(fer_small), out=str(tmp_path / "student"), init=str(tiny_run / "model.keras"),
                        teachers=[str(tiny_run)], distill=0.7, label_smoothing=0.0, input_size=48, epochs=1,
                        batch_size=32, warmup_epochs=0, seed=3))
    recipe = mf.load(out / "manifest.json").source["recipe"]
    assert recipe["teachers"] == [str(tiny_run)] and recipe["distill"] == 0.7
    assert not (out / "soft_targets.npz").exists() and (out / "model.keras").is_file()


def test_fit_with_an_unfit_teacher_is_one_error_line_and_leaves_nothing(fer_small, tmp_path):
    from tests.test_training import cli

    out = tmp_path / "student"
    result = cli("fit", "--data", fer_small, "--input-size", 64, "--teacher", SHIPPED, "--teacher",
                 tmp_path / "nope.keras", "--epochs", 1, "--out", out)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "nope.keras does not exist" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not Path(str(out) + ".incomplete").exists()
