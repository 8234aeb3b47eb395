"""convert/: Keras -> .tflite in every mode, LiteRT runs it, evaluate equals scikit-learn, bad input is one line.

Two models go through the converter:

- ``tiny_run`` (conftest), the tiny MobileNetV2 trained 2 epochs on FER2013
  subsets, in all four modes.  Two epochs are 14 steps, too few for the
  BatchNorm moving averages to catch up with the weights (even at momentum
  0.99), so this model gives every face the same, nearly uniform
  probabilities (0.137 to 0.146, identical across faces to 1e-6).  Its int8
  version reproduces them to within an output step or two, but its top-1
  class is then a tie-break: top-1 agreement on it measures nothing.
- ``cnn_run``: a three-layer CNN trained here for 40 epochs on ``fer_small``
  (about 15 s), whose probabilities depend on the face.  It is the model for
  int8-versus-float agreement and for the metric checks.

The converted models are shared by module fixtures: one SavedModel export and
one conversion per mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from device import manifest as mf
from device.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
MODES = ("int8", "float16", "dynamic", "float32")

# int8 against float32 on fer_small/val (210 faces), for cnn_run.  Measured: top-1 agreement 0.967, mean absolute
# probability difference 0.003.  The thresholds leave room for other CPUs and kernels (XNNPACK or reference) while
# a broken int8 path (calibration or input scaled differently from inference, wrong zero point) falls towards
# chance agreement (1/7) and differences of the order of the probabilities themselves (0.1).
MIN_INT8_AGREEMENT = 0.90
MAX_INT8_MEAN_ABS_DIFF = 0.02


# --- helpers -----------------------------------------------------------------------------------------------------

def cli(*args, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def litert(path: Path):
    from ai_edge_litert import interpreter

    interp = interpreter.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return interp


def run_litert(path: Path, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """Raw pixels -> (dequantized outputs, output details), written here independently of device.runtime."""
    interp = litert(path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = images.astype(np.float32)
    scale, zero = inp["quantization"]
    if inp["dtype"] in (np.int8, np.uint8):
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    y = interp.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    if out["dtype"] in (np.int8, np.uint8):
        y = (y - zero) * scale
    return y, out


def read_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """FER2013 faces (48x48 grayscale, the models' input size) and their class indices."""
    xs, ys = [], []
    for index, label in enumerate(LABELS):
        for f in sorted((root / label).iterdir()):
            image = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            assert image.shape == (48, 48)
            xs.append(image[..., None])
            ys.append(index)
    return np.stack(xs), np.array(ys)


# --- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tflite(tiny_run, fer_small, tmp_path_factory) -> dict[str, Path]:
    """tiny_run in every mode through convert.quantize; int8 verified on fer_small/val, float16 with a new crop."""
    from convert import calibration
    from convert.evaluate import load_labelled
    from convert.quantize import Options, quantize
    from convert.source import KerasModel

    out = tmp_path_factory.mktemp("tiny_tflite")
    paths = {}
    with KerasModel(tiny_run) as model:
        images = calibration.load(fer_small, model.manifest, samples=100)
        verify = load_labelled(fer_small, model.manifest)
        for mode in MODES:
            opts = Options(mode, out / f"tiny_{mode}.tflite", crop_margin=0.25 if mode == "float16" else None)
            quantize(model, opts, images if mode == "int8" else None, verify if mode == "int8" else None,
                     fer_small / "val")
            paths[mode] = opts.out
    return paths


@pytest.fixture(scope="module")
def cnn_run(fer_small, tmp_path_factory) -> Path:
    """A run directory (model.keras + manifest.json) of a small CNN trained on fer_small/train."""
    import keras
    from keras import layers

    from training.data import load_folder

    run = tmp_path_factory.mktemp("cnn_run")
    manifest = mf.Manifest(labels=LABELS, input_size=48, color="grayscale", source={"arch": "test-cnn"})
    train = load_folder(fer_small / "train", 48, "grayscale", LABELS)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((48, 48, 1), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for filters in (8, 16, 32):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(len(LABELS), activation="softmax")(x))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(train.x.astype("float32"), train.y, epochs=40, batch_size=32, verbose=0)
    model.save(run / "model.keras")
    mf.save(manifest, run / "manifest.json")
    return run


@pytest.fixture(scope="module")
def cnn_tflite(cnn_run, fer_small, tmp_path_factory) -> dict[str, Path]:
    """cnn_run as int8 (through the CLI, in this process: verified, max drop 5 pp) and float32."""
    from convert.cli import main

    out = tmp_path_factory.mktemp("cnn_tflite")
    paths = {"int8": out / "cnn_int8.tflite", "float32": out / "cnn_float32.tflite"}
    assert main(["quantize", "--model", str(cnn_run), "--mode", "int8", "--calibration", str(fer_small),
                 "--verify", str(fer_small), "--max-drop", "5", "--out", str(paths["int8"])]) == 0
    assert main(["quantize", "--model", str(cnn_run / "model.keras"), "--mode", "float32",
                 "--out", str(paths["float32"])]) == 0
    return paths


# --- quantize ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_in_litert_and_matches_its_manifest(mode, tiny_tflite, tiny_run, fer_small):
    path = tiny_tflite[mode]
    manifest = mf.load(mf.manifest_path_for(path))
    assert mf.manifest_path_for(path) == path.with_suffix(".json")
    assert manifest.mode == mode
    assert manifest.model_sha256 == mf.sha256_file(path)
    assert manifest.source["keras_sha256"] == mf.sha256_file(tiny_run / "model.keras")
    assert manifest.labels == LABELS and manifest.input_size == 48 and manifest.color == "grayscale"
    assert manifest.scale == 1.0 and manifest.offset == 0.0 and manifest.activation == "softmax"
    assert {"tensorflow", "keras", "ai-edge-litert"} <= set(manifest.tools)
    run_crop = mf.load(tiny_run / "manifest.json").crop
    assert manifest.crop.margin == (0.25 if mode == "float16" else run_crop.margin)
    assert manifest.crop.square == run_crop.square

    interp = litert(path)
    ops = {op["op_name"] for op in interp._get_ops_details()}
    assert not any(name.startswith("Flex") for name in ops), ops  # built-in ops only
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    if mode == "int8":
        assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
        assert manifest.input_quant == mf.Quant(*inp["quantization"], "int8")
        assert manifest.output_quant == mf.Quant(*out["quantization"], "int8")
        assert manifest.verification["n"] == 30 * len(LABELS)
        assert manifest.verification["agreement_with_keras"] is not None
    else:
        assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
        assert manifest.input_quant is None and manifest.output_quant is None
        assert manifest.verification == {}

    images, _ = read_folder(fer_small / "val")
    probs, details = run_litert(path, images[::25])
    assert probs.shape == (len(images[::25]), len(LABELS))
    # A softmax sums to 1; int8 outputs are each within half a quantisation step of theirs.
    tolerance = len(LABELS) * details["quantization"][0] / 2 + 1e-6 if mode == "int8" else 1e-4
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=tolerance)
    assert (probs >= 0).all()


def test_tiny_run_int8_reproduces_its_float_probabilities(tiny_tflite, fer_small):
    images, _ = read_folder(fer_small / "val")
    float32, _ = run_litert(tiny_tflite["float32"], images)
    int8, details = run_litert(tiny_tflite["int8"], images)
    # See the module docstring: this model's outputs are the same for every face, so only the values can be
    # compared, to within two int8 output steps.
    assert np.abs(int8 - float32).max() <= 2 * details["quantization"][0]


def test_folded_tta_is_the_mean_over_the_views(cnn_run, cnn_tflite, fer_small, tmp_path):
    """--flip-tta --zoom-tta 0.9: the .tflite's output is the mean of the Keras model's outputs on the face, its
    centre crop of 43 px (0.9 x 48) resized back to 48, and the mirrors of both; computed here with OpenCV."""
    import keras

    from convert.cli import main

    out = tmp_path / "tta.tflite"
    assert main(["quantize", "--model", str(cnn_run), "--mode", "float32", "--flip-tta", "--zoom-tta", "0.9",
                 "--out", str(out)]) == 0
    assert mf.load(out.with_suffix(".json")).source["zoom_tta"] == [0.9]
    images, _ = read_folder(fer_small / "val")
    x = images.astype(np.float32)
    zoomed = np.stack([cv2.resize(i[2:45, 2:45], (48, 48), interpolation=cv2.INTER_LINEAR)[..., None] for i in x])
    model = keras.models.load_model(cnn_run / "model.keras", compile=False)
    views = [x, x[:, :, ::-1], zoomed, zoomed[:, :, ::-1]]
    expected = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    got, _ = run_litert(out, images)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    plain, _ = run_litert(cnn_tflite["float32"], images)
    assert np.abs(plain - expected).max() > 0.01  # the views matter: TTA is not a no-op here


def test_zoom_tta_out_of_range_is_one_error_line(cnn_run, tmp_path):
    result = cli("quantize", "--model", cnn_run, "--mode", "float32", "--zoom-tta", "1.2", "--out",
                 tmp_path / "x.tflite")
    assert result.returncode != 0 and len(error_lines(result.stderr)) == 1, result.stderr[-2000:]
    assert "--zoom-tta" in error_lines(result.stderr)[0] and not (tmp_path / "x.tflite").exists()


def test_int8_agrees_with_float_on_fer2013(cnn_tflite, fer_small):
    from convert.evaluate import agreement

    images, _ = read_folder(fer_small / "val")
    float32, _ = run_litert(cnn_tflite["float32"], images)
    int8, _ = run_litert(cnn_tflite["int8"], images)
    # The model must discriminate for agreement to mean something: at least 4 of the 7 classes are predicted.
    assert len(np.unique(float32.argmax(axis=1))) >= 4
    assert agreement(float32, int8) >= MIN_INT8_AGREEMENT
    assert np.abs(float32 - int8).mean() <= MAX_INT8_MEAN_ABS_DIFF


def test_quantize_records_verification_against_keras(cnn_tflite):
    v = mf.load(mf.manifest_path_for(cnn_tflite["int8"])).verification
    assert v["n"] == 30 * len(LABELS) and v["data"].endswith("val")
    assert v["accuracy_drop_pp"] == pytest.approx(100 * (v["keras_accuracy"] - v["accuracy"]))
    assert v["agreement_with_keras"] >= MIN_INT8_AGREEMENT
    assert v["max_drop_pp"] == 5.0
    source = mf.load(mf.manifest_path_for(cnn_tflite["int8"])).source
    assert source["calibration"]["samples"] == 200 and source["io_type"] == "int8"


def test_accuracy_drop_over_max_writes_nothing(cnn_run, fer_small, tmp_path, capsys):
    from convert.cli import main

    out = tmp_path / "models" / "too_lossy.tflite"
    # float32 loses nothing, and a negative --max-drop demands a gain: the check must fail.
    code = main(["quantize", "--model", str(cnn_run), "--mode", "float32", "--verify", str(fer_small),
                 "--max-drop", "-1", "--out", str(out)])
    errors = error_lines(capsys.readouterr().err)
    assert code == ModelError.exit_code
    assert len(errors) == 1 and "exceeds --max-drop" in errors[0] and "no model written" in errors[0], errors
    assert not out.exists() and not mf.manifest_path_for(out).exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temp files either


def test_only_if_better_keeps_a_model_that_is_not_beaten(cnn_run, cnn_tflite, fer_small, tmp_path, capsys):
    """The shipped-model rule: a new model replaces the one at --out only if it scores higher on the same data."""
    import shutil

    from convert.cli import main

    out = tmp_path / "shipped.tflite"
    shutil.copy(cnn_tflite["int8"], out)
    shutil.copy(mf.manifest_path_for(cnn_tflite["int8"]), mf.manifest_path_for(out))
    before = out.read_bytes(), mf.manifest_path_for(out).read_bytes()
    shipped = mf.load(mf.manifest_path_for(out)).verification["accuracy"]
    args = ["quantize", "--model", str(cnn_run), "--mode", "float32", "--verify", str(fer_small),
            "--max-drop", "5", "--only-if-better", "--out", str(out)]

    # Same model in float32: it beats the int8 one only if its accuracy on the same 210 faces is higher.
    code = main(args)
    errors = error_lines(capsys.readouterr().err)
    new = json.loads(mf.manifest_path_for(out).read_text())["verification"]["accuracy"]
    if code == 0:
        assert new > shipped and out.read_bytes() != before[0]
    else:
        assert len(errors) == 1 and "does not beat" in errors[0] and f"{shipped:.4f}" in errors[0], errors
        assert (out.read_bytes(), mf.manifest_path_for(out).read_bytes()) == before

    # Against itself it can never be better: the file must stay as it is.
    before = out.read_bytes(), mf.manifest_path_for(out).read_bytes()
    assert main(args) == ModelError.exit_code
    assert "does not beat" in error_lines(capsys.readouterr().err)[0]
    assert (out.read_bytes(), mf.manifest_path_for(out).read_bytes()) == before


# --- evaluate ----------------------------------------------------------------------------------------------------

def test_evaluate_needs_no_tensorflow_and_equals_sklearn(cnn_tflite, fer_small, tmp_path):
    report = tmp_path / "eval.json"
    check = ("import sys; from convert.cli import main; code = main(sys.argv[1:]); "
             "heavy = sorted({'tensorflow', 'keras'} & set(sys.modules)); "
             "print('imported:', heavy, file=sys.stderr); sys.exit(code or (3 if heavy else 0))")
    result = subprocess.run([sys.executable, "-c", check, "evaluate", "--model", str(cnn_tflite["int8"]),
                             "--data", str(fer_small), "--json", str(report)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stderr
    got = json.loads(report.read_text())

    # The same predictions, computed here with LiteRT, OpenCV and scikit-learn only.
    images, y = read_folder(fer_small / "val")
    probs, _ = run_litert(cnn_tflite["int8"], images)
    pred = probs.argmax(axis=1)
    assert len(np.unique(pred)) >= 4  # not a constant predictor
    assert got["n"] == len(y) and got["data"] == str(fer_small / "val")
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    per_class = skm.recall_score(y, pred, average=None, zero_division=0)  # per-class accuracy
    assert list(got["per_class_accuracy"]) == list(LABELS)
    np.testing.assert_allclose(list(got["per_class_accuracy"].values()), per_class)
    assert got["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert f"accuracy {got['accuracy']:.4f}" in result.stdout


def test_evaluate_with_keras_reports_agreement(cnn_tflite, cnn_run, fer_small):
    from convert.evaluate import evaluate

    result = evaluate(cnn_tflite["float32"], fer_small, keras_model=cnn_run, batch_size=50)
    assert result["agreement_with_keras"] == 1.0  # float32 is the Keras model
    assert result["accuracy_drop_pp"] == pytest.approx(0.0, abs=1e-9)
    assert result["keras"]["accuracy"] == pytest.approx(result["accuracy"])


def test_evaluate_refuses_a_model_that_differs_from_its_manifest(cnn_tflite, tmp_path):
    from device.classifier import open_checked

    copy = tmp_path / "changed.tflite"
    copy.write_bytes(cnn_tflite["int8"].read_bytes() + b"\0")
    mf.manifest_path_for(copy).write_bytes(mf.manifest_path_for(cnn_tflite["int8"]).read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        open_checked(copy, accelerator="cpu")


# --- bench -------------------------------------------------------------------------------------------------------

def test_bench_prints_a_table(cnn_tflite):
    from convert.bench import bench, format_table

    result = bench(cnn_tflite["int8"], threads=(1, 2), runs=5, warmup=1)
    assert [t.threads for t in result.timings] == [1, 2]
    assert all(0 < t.median_ms <= t.p95_ms for t in result.timings)
    assert result.size_bytes == cnn_tflite["int8"].stat().st_size and result.mode == "int8"
    assert result.rss_peak_bytes >= result.rss_before_bytes > 0
    table = format_table(result)
    assert "| threads | median ms | p95 ms | runs |" in table and "peak RSS" in table


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["not_a_model", "empty_calibration", "class_mismatch"])
def test_bad_input_gives_one_error_line(case, tiny_run, fer_small, tmp_path):
    out = tmp_path / "models" / "x.tflite"
    model, calibration, expected = tiny_run / "model.keras", fer_small, ""
    if case == "not_a_model":
        model = tmp_path / "run" / "model.keras"
        model.parent.mkdir()
        model.write_text("this is not a Keras model\n")
        expected = "is not a Keras model"
    elif case == "empty_calibration":
        calibration = tmp_path / "empty"
        calibration.mkdir()
        expected = "at least 2 class folders"
    else:
        calibration = tmp_path / "two"
        for name in ("calm", "smile"):
            (calibration / name).mkdir(parents=True)
            cv2.imwrite(str(calibration / name / "face.png"), np.full((48, 48), 128, np.uint8))
        expected = "differ from the model's"
    result = cli("quantize", "--model", model, "--mode", "int8", "--calibration", calibration, "--out", out)
    errors = error_lines(result.stderr)
    assert result.returncode != 0
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not mf.manifest_path_for(out).exists()


def test_unloadable_and_unconvertible_models_raise_model_error(tiny_run, tmp_path):
    import keras
    import tensorflow as tf

    from convert.quantize import convert
    from convert.source import KerasModel

    fake = tmp_path / "fake" / "model.keras"  # a zip, but not a Keras model
    fake.parent.mkdir()
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("hello.txt", "hi")
    (fake.parent / "manifest.json").write_bytes((tiny_run / "manifest.json").read_bytes())
    with pytest.raises(ModelError, match="cannot load .* as a Keras model"):
        KerasModel(fake)

    @keras.saving.register_keras_serializable(package="test_convert")
    class SingularValues(keras.layers.Layer):  # tf.linalg.svd has no LiteRT built-in kernel
        def call(self, x):
            return tf.linalg.svd(tf.reshape(x, (-1, 8, 8)), compute_uv=False)

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(SingularValues()(inputs))
    run = tmp_path / "svd"
    run.mkdir()
    keras.Model(inputs, outputs).save(run / "model.keras")
    mf.save(mf.Manifest(labels=("a", "b"), input_size=8), run / "manifest.json")
    with KerasModel(run) as model, pytest.raises(ModelError, match="no built-in kernel for: tf.Svd"):
        convert(model, "float32")
