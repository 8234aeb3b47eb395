"""A large FER+ teacher on a lent GPU machine, for distillation into the shipped student on the CPU.

Two steps, one script (models/MODEL.md, "The FER+ teacher"):

  # here: the images as JPEG bytes plus the votes, one file (the dataset itself does not travel)
  python scripts/ferplus_teacher.py pack --data ../shared/datasets/fer2013 \
      --votes ../shared/datasets/fer2013/ferplus_votes.csv --out .gpu/fer.npz
  # there (Keras on JAX, numpy arrays; keras, namex and optree carried as wheels):
  KERAS_BACKEND=jax python scripts/ferplus_teacher.py train --pack .gpu/fer.npz --out $OUT --budget 420

``train`` fits an ensemble of ResNet-18-layout teachers (6.3 M parameters each, 64 px, bf16) on the FER+
probability targets with augmentation, as many as the time budget allows, each on its own cosine schedule
whose length is set from the measured epoch time.  It then distils the ensemble into the student
(the shipped model's backbone under a new 8-class head), teacher and student seeing the same augmented
image.  It writes, each as soon as it is ready: ``preds.npz`` (every teacher's and the ensemble's
probabilities, flip averaged in, for every packed image, keyed by file), ``teacher_K.npz`` (float16
weights), ``student.keras`` with ``student.json``, and ``summary.json``.  On the CPU,
``training fit --teacher preds.npz`` takes the ensemble's probabilities as a cached teacher.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("ferplus_teacher")
SIZE = 64  # the student's input; the teachers take the same images


# ---------------------------------------------------------------- pack (CPU, here)

def pack(data: Path, votes_csv: Path, out: Path) -> None:
    import cv2

    from device.preprocess import to_model_image
    from training import votes as V
    from training.data import list_class_folder

    votes = V.read(votes_csv)
    keys, blobs, split, folder_label, counts = [], [], [], [], []
    for number, name in enumerate(("train", "val")):
        labels, items = list_class_folder(data / name)
        for path, label in items:
            key = "/".join(path.parts[-3:])
            row = votes.rows.get(key)
            keys.append(key)
            blobs.append(np.frombuffer(path.read_bytes(), dtype=np.uint8))
            split.append(number)
            folder_label.append(label)
            counts.append(row if row is not None else np.full(len(V.COLUMNS), -1, np.int32))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    # A fingerprint of the decoded model-size images, to check that the other machine decodes the same pixels.
    sample = np.stack([to_model_image(cv2.imdecode(b, cv2.IMREAD_GRAYSCALE), SIZE, "grayscale") for b in blobs[:512]])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, jpeg=np.concatenate(blobs), offsets=offsets, keys=np.array(keys, dtype="S"), split=np.array(split, np.int8),
             folder_label=np.array(folder_label, np.int8), folder_labels=np.array(labels),
             counts=np.stack(counts).astype(np.int16), votes_sha256=np.array(votes.sha256),
             sample_mean=np.array(sample.astype(np.float64).mean()), sample_sum=np.array(int(sample.sum())))
    print(f"packed {len(keys)} images ({offsets[-1] / 1e6:.1f} MB of JPEG) into {out}: "
          f"{out.stat().st_size / 1e6:.1f} MB")


# ---------------------------------------------------------------- train (GPU, there)

class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.time(), budget

    def left(self) -> float:
        return self.budget - (time.time() - self.start)


def decode(packed) -> np.ndarray:
    import cv2

    from device.preprocess import to_model_image

    jpeg, offsets = packed["jpeg"], packed["offsets"]
    images = [to_model_image(cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE), SIZE, "grayscale")
              for i in range(len(offsets) - 1)]
    return np.stack(images)


def resnet(keras, num_classes: int, widths=(48, 96, 192, 384), seed: int = 0, name: str = "teacher"):
    """ResNet-18's layout (2 basic blocks a stage) for 64 px faces: a full-resolution stem, then 32-16-8-4 px."""
    from keras import layers

    init = keras.initializers.HeNormal(seed=seed)

    def conv(x, filters, stride=1, kernel=3):
        return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, kernel_initializer=init)(x)

    def bn(x, zero=False):
        return layers.BatchNormalization(momentum=0.9, gamma_initializer="zeros" if zero else "ones")(x)

    def block(x, filters, stride):
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = bn(conv(x, filters, stride, 1))
        y = layers.ReLU()(bn(conv(x, filters, stride)))
        y = bn(conv(y, filters), zero=True)  # zero-init last BN: each block starts as the identity
        return layers.ReLU()(layers.Add()([shortcut, y]))

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = layers.ReLU()(bn(conv(x, 32)))
    x = layers.ReLU()(bn(conv(x, widths[0], 2)))
    for stage, filters in enumerate(widths):
        x = block(x, filters, 1 if stage == 0 else 2)
        x = block(x, filters, 1)
    x = layers.GlobalAveragePooling2D(dtype="float32")(x)  # a bf16 mean gave NaN under XLA on the CPU
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", kernel_initializer="zeros")(x)
    return keras.Model(inputs, outputs, name=name)


def erasing_layer(keras):
    from keras import ops

    class RandomErasing(keras.layers.Layer):
        """Cutout: with probability p, one rectangle of 4-25 % of the image set to the image's mean."""

        def __init__(self, p=0.5, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.p, self.seed_generator = p, keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            if not training:
                return images
            n, h, w = ops.shape(images)[0], images.shape[1], images.shape[2]

            def u(lo, hi):
                return keras.random.uniform((n, 1, 1, 1), lo, hi, seed=self.seed_generator)

            area, aspect = u(0.04, 0.25), ops.exp(u(-1.0, 1.0))
            eh, ew = ops.sqrt(area * aspect) * h, ops.sqrt(area / aspect) * w
            cy, cx = u(0, 1) * h, u(0, 1) * w
            rows = ops.reshape(ops.arange(h, dtype="float32"), (1, h, 1, 1))
            cols = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, w, 1))
            inside = (ops.abs(rows - cy) < eh / 2) & (ops.abs(cols - cx) < ew / 2) & (u(0, 1) < self.p)
            return ops.where(inside, ops.mean(images, axis=(1, 2, 3), keepdims=True), images)

    return RandomErasing


def trainer(keras, net, seed: int, rotation: float = 15.0, zoom: float = 0.15):
    """The net under augmentation (flip, affine, brightness, contrast, cutout), for training only."""
    from training.augment import Augment

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = Augment(rotation_deg=rotation, zoom=zoom, seed=seed, dtype="float32")(inputs)
    x = erasing_layer(keras)(seed=seed + 1, dtype="float32")(x)
    return keras.Model(inputs, net(x))


class EpochClock:
    """Keras callback: wall time of each epoch, and a hard stop at the deadline."""

    def __init__(self, keras, clock: Clock, reserve: float):
        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.began = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.times.append(time.perf_counter() - outer.began)
                log.info("  epoch %d: %.1f s, loss %.4f, %.0f s left", epoch + 1, outer.times[-1],
                         (logs or {}).get("loss", float("nan")), clock.left())
                if not np.isfinite((logs or {}).get("loss", 0.0)):
                    log.error("  the loss is not finite: stopping this fit")
                    self.model.stop_training = True
                elif clock.left() < reserve:
                    log.warning("  deadline: stopping this fit early")
                    self.model.stop_training = True

        self.callback, self.times, self.began = Callback(), [], 0.0


def fit_budgeted(keras, model, make_optimizer, loss, x, y, w, batch: int, epochs_range: tuple[int, int],
                 seconds, clock: Clock, reserve: float, known: tuple[float, float] | None = None) -> dict:
    """Train for as many epochs as ``seconds(time_per_epoch)`` allows (within ``epochs_range``), on a cosine
    schedule after a one-epoch warm-up.  Without ``known`` (seconds per epoch, compile seconds), two warm-up
    epochs are fitted first (the first compiles, the second is timed); with it, one fit does everything."""
    steps = int(np.ceil(len(x) / batch))
    timer = EpochClock(keras, clock, reserve)
    started = time.perf_counter()
    peak = make_optimizer.peak
    if known is None:
        model.compile(optimizer=make_optimizer(keras.optimizers.schedules.PolynomialDecay(
            peak / 10, steps, end_learning_rate=peak, power=1.0)), loss=loss, jit_compile=True)
        model.fit(x, y, sample_weight=w, batch_size=batch, epochs=2, verbose=0, callbacks=[timer.callback])
        per_epoch, compiling = timer.times[-1], timer.times[0] - timer.times[-1]
        left = seconds(per_epoch) - (time.perf_counter() - started)
        schedule = None
    else:
        per_epoch, compiling = known
        left = seconds(per_epoch) - compiling
    epochs = int(np.clip(left // (per_epoch * 1.06), *epochs_range))
    log.info("  %.1f s an epoch, %.1f s compiling: %d more epochs", per_epoch, compiling, epochs)
    if known is None:
        schedule = keras.optimizers.schedules.CosineDecay(peak, steps * epochs, alpha=0.0)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(peak / 10, steps * (epochs - 1), alpha=0.0,
                                                          warmup_target=peak, warmup_steps=steps)
    model.compile(optimizer=make_optimizer(schedule), loss=loss, jit_compile=True)
    model.fit(x, y, sample_weight=w, batch_size=batch, epochs=epochs, verbose=0, callbacks=[timer.callback])
    return {"epochs": len(timer.times), "planned_epochs": epochs + (0 if known else 2),
            "seconds_per_epoch": round(float(np.median(timer.times[1:] or timer.times)), 2),
            "first_epoch_seconds": round(timer.times[0], 1), "seconds": round(time.perf_counter() - started, 1),
            "timing": [round(per_epoch, 2), round(compiling, 1)]}


def sgd(keras, peak: float, weight_decay: float):
    def make(rate):
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    make.peak = peak
    return make


def adamw(keras, peak: float, weight_decay: float):
    def make(rate):
        return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    make.peak = peak
    return make


def soft_cross_entropy(keras):
    from keras import ops

    def loss(y_true, y_pred):
        return -ops.sum(y_true * ops.log(ops.clip(y_pred, 1e-7, 1.0)), axis=-1)
    return loss


def predict_flip(model, x: np.ndarray, batch: int = 2048) -> np.ndarray:
    """Probabilities with the horizontal flip averaged in, as the device runs the shipped model."""
    return (model.predict(x, batch_size=batch, verbose=0) + model.predict(x[:, :, ::-1], batch_size=batch,
                                                                            verbose=0)) / 2


def scores(probs: np.ndarray, y: np.ndarray, votes: np.ndarray) -> dict:
    pred = probs.argmax(1)
    recall = [float(np.mean(pred[y == c] == c)) if (y == c).any() else None for c in range(probs.shape[1])]
    return {"accuracy": round(float(np.mean(pred == y)), 4),
            "mean_recall": round(float(np.mean([r for r in recall if r is not None])), 4),
            "recall": [None if r is None else round(r, 3) for r in recall],
            "votes_cross_entropy": round(float(np.mean(-(votes * np.log(np.clip(probs, 1e-7, 1))).sum(1))), 4)}


def choose_precision(keras, precision: str, sample: np.ndarray) -> str:
    """bf16 where it computes: XLA on the CPU fused a bf16 ResNet into NaN outputs (jax 0.11.2), so a model
    that predicts NaN in bf16 trains in float32 instead."""
    keras.mixed_precision.set_dtype_policy(precision)
    if precision != "float32" and np.isnan(resnet(keras, 8, name="probe").predict(sample, verbose=0)).any():
        log.warning("%s predicts NaN on this machine; training in float32", precision)
        precision = "float32"
        keras.mixed_precision.set_dtype_policy(precision)
    return precision


def folder_accuracy(probs: np.ndarray, folder_label: np.ndarray, folder_labels: list[str]) -> float:
    """Accuracy against the folder's FER2013 labels: the top class among those 7."""
    from training import votes as V

    columns = np.array([V.LABELS.index(name) for name in folder_labels])
    return round(float(np.mean(probs[:, columns].argmax(1) == folder_label)), 4)


def train(pack_path: Path, out: Path, budget: float, max_teachers: int, student_share: float,
          student_init: Path, limit: int | None = None, precision: str = "mixed_bfloat16",
          student_lr: float = 2e-3) -> None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    clock = Clock(budget)
    import keras

    from device import manifest as mf
    from training import votes as V

    summary: dict = {"backend": keras.backend.backend(), "keras": keras.__version__, "budget_s": budget}

    def save_summary():
        mf.write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())

    if keras.backend.backend() == "jax":
        import jax
        summary["devices"] = [str(d) for d in jax.devices()]
        jax.config.update("jax_compilation_cache_dir", "/tmp/jax-cache")  # same-shaped models compile once
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    log.info("devices: %s", summary.get("devices"))
    packed = dict(np.load(pack_path))
    if limit:  # a dry run: a few hundred training images and a quarter as many val images
        split = packed["split"]
        sel = np.concatenate([np.flatnonzero(split == 0)[::max(1, (split == 0).sum() // limit)][:limit],
                              np.flatnonzero(split == 1)[::8][:max(1, limit // 4)]])
        blobs = [packed["jpeg"][packed["offsets"][i]:packed["offsets"][i + 1]] for i in sel]
        packed.update(jpeg=np.concatenate(blobs), offsets=np.cumsum([0] + [len(b) for b in blobs]),
                      **{k: packed[k][sel] for k in ("keys", "split", "counts", "folder_label")})
    x_all = decode(packed)
    check = {"sum": int(x_all[:512].sum()), "packed_sum": None if limit else int(packed["sample_sum"])}
    summary["decode_check"] = check
    log.info("decoded %d images, %.1f s; decode check %s", len(x_all), time.time() - clock.start, check)
    counts = packed["counts"].astype(np.int32)
    has = counts[:, 0] >= 0
    ok = has & V.usable(np.maximum(counts, 0))
    split = packed["split"]
    train_idx, val_idx = np.flatnonzero(ok & (split == 0)), np.flatnonzero(ok & (split == 1))
    dist = V.distributions(np.maximum(counts, 0))
    major = V.majority_labels(np.maximum(counts, 0))
    x_train, y_train, x_val = x_all[train_idx], dist[train_idx], x_all[val_idx]
    # sqrt-balanced weights by majority class, so the rare expressions (contempt, disgust, fear) count
    freq = np.bincount(major[train_idx], minlength=len(V.LABELS)).astype(np.float64)
    class_w = np.sqrt(freq.sum() / (len(freq) * np.maximum(freq, 1)))
    w_train = (class_w / class_w[major[train_idx]].mean())[major[train_idx]].astype("float32")
    summary["train_images"], summary["val_images"] = len(train_idx), len(val_idx)
    save_summary()

    summary["precision"] = choose_precision(keras, precision, x_train[:64])
    teacher_seconds = clock.left() - clock.budget * student_share - 30
    plan = {"teachers": max_teachers}

    def share(per_epoch: float) -> float:
        """Teacher 1 sets how many teachers fit: each gets at least 45 epochs where the budget allows."""
        if "share" not in plan:
            plan["teachers"] = int(np.clip(teacher_seconds // (per_epoch * 45 + 20), 1, max_teachers))
            plan["share"] = teacher_seconds / plan["teachers"]
            log.info("  %d teacher(s) of %.0f s each", plan["teachers"], plan["share"])
        return plan["share"]

    teachers, probs_all = [], []
    summary["teachers"] = []
    for k in range(max_teachers):
        if k >= plan["teachers"] or (k and clock.left() - clock.budget * student_share < plan["share"] * 0.8):
            log.info("no time for teacher %d", k + 1)
            break
        log.info("teacher %d of at most %d", k + 1, plan["teachers"])
        keras.utils.set_random_seed(100 + k)
        net = resnet(keras, len(V.LABELS), seed=100 + k, name=f"teacher_{k}")
        run = fit_budgeted(keras, trainer(keras, net, seed=200 + k), sgd(keras, 0.1, 5e-4),
                           soft_cross_entropy(keras), x_train, y_train, w_train, 256, (8, 120), share, clock,
                           reserve=clock.budget * student_share + 20,
                           known=tuple(summary["teachers"][0]["timing"]) if k else None)
        probs = predict_flip(net, x_all)
        if not np.isfinite(probs).all():
            log.error("teacher %d predicts NaN in %s: dropped; the next in float32", k + 1, summary["precision"])
            summary["precision"] = "float32"
            keras.mixed_precision.set_dtype_policy("float32")
            continue
        teachers.append(net)
        probs_all.append(probs.astype(np.float16))
        run["val"] = scores(probs[val_idx], major[val_idx], dist[val_idx])
        run["params"] = int(net.count_params())
        ensemble = np.mean(np.stack(probs_all).astype(np.float32), axis=0)
        summary["teachers"].append(run)
        summary["ensemble_val"] = scores(ensemble[val_idx], major[val_idx], dist[val_idx])
        summary["ensemble_val"]["fer2013_label_accuracy"] = folder_accuracy(
            ensemble[val_idx], packed["folder_label"][val_idx], [str(n) for n in packed["folder_labels"]])
        log.info("teacher %d: val %s; ensemble of %d: %s", k + 1, run["val"], len(teachers), summary["ensemble_val"])
        np.savez(out / f"teacher_{k}.npz", *[np.asarray(v).astype(np.float16) for v in net.get_weights()])
        np.savez(out / "preds.npz", keys=packed["keys"], labels=np.array(V.LABELS), teachers=np.stack(probs_all),
                 probs=ensemble.astype(np.float32))
        save_summary()

    if clock.left() > 45 and teachers:
        summary["student"] = distil(keras, teachers, student_init, x_train, y_train, w_train, x_all, clock,
                                    out, val_idx, major, dist, student_lr)
        save_summary()
    summary["seconds"] = round(time.time() - clock.start, 1)
    save_summary()
    log.info("summary: %s", json.dumps({k: summary[k] for k in ("ensemble_val", "student", "seconds")
                                       if k in summary}))


def distil(keras, teachers, init_path: Path, x_train, y_train, w_train, x_all, clock: Clock, out: Path,
           val_idx, major, dist, lr: float) -> dict:
    """The student (the shipped backbone, new 8-class head) against the ensemble on the same augmented image."""
    from keras import layers, ops

    from device import manifest as mf
    from training import init as inits, model as models
    from training import votes as V
    from training.augment import Augment

    keras.mixed_precision.set_dtype_policy("float32")
    parent = inits.load(init_path)
    student = parent.classifier(V.LABELS, 0.3, "softmax", "classifier")
    models.set_bn_momentum(student, 0.99)
    for t in teachers:
        t.trainable = False
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = Augment(seed=7, dtype="float32")(inputs)
    taught = ops.mean(ops.stack([t(x, training=False) for t in teachers]), axis=0)
    own = student(x)
    own = own[0] if isinstance(own, (list, tuple)) else own  # a warm restart's model keeps its list of outputs
    both = layers.Concatenate(dtype="float32")([own, ops.stop_gradient(ops.cast(taught, "float32"))])
    kd = keras.Model(inputs, both)
    n = len(V.LABELS)

    def loss(y_true, y_pred):
        target = 0.7 * y_pred[:, n:] + 0.3 * y_true
        return -ops.sum(target * ops.log(ops.clip(y_pred[:, :n], 1e-7, 1.0)), axis=-1)

    seconds = clock.left() - 40
    run = fit_budgeted(keras, kd, adamw(keras, lr, 1e-4), loss, x_train, y_train, w_train, 256, (4, 300),
                       lambda per_epoch: seconds, clock, reserve=25)
    probs = predict_flip(student, x_all)
    run["val"] = scores(probs[val_idx], major[val_idx], dist[val_idx])
    log.info("student: val %s", run["val"])
    student.save(out / "student.keras")
    manifest = mf.Manifest(labels=V.LABELS, input_size=SIZE, color="grayscale", source={
        "arch": parent.source.get("arch", "mobilenetv2"), "alpha": parent.source.get("alpha"),
        "parent": parent.lineage(V.LABELS), "distilled_on": "GPU, scripts/ferplus_teacher.py",
        "float_val_accuracy_flip_tta": run["val"]["accuracy"]},
        tools={"keras": keras.__version__, "backend": keras.backend.backend()})
    mf.save(manifest, out / "student.json")
    with np.load(out / "preds.npz") as saved:
        np.savez(out / "preds.npz", **{k: saved[k] for k in saved.files}, student=probs.astype(np.float32))
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="the images (JPEG bytes) and votes in one .npz")
    p.add_argument("--data", type=Path, required=True, help="the dataset root (train/ and val/)")
    p.add_argument("--votes", type=Path, required=True, help="ferplus_votes.csv")
    p.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help="teachers, then the distilled student (a GPU machine)")
    t.add_argument("--pack", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--budget", type=float, default=420, help="seconds for everything (default: 420)")
    t.add_argument("--teachers", type=int, default=3, help="at most this many teachers (default: 3)")
    t.add_argument("--student-share", type=float, default=0.25,
                   help="share of the budget for the student's distillation (default: 0.25)")
    t.add_argument("--student-init", type=Path, default=ROOT / "models" / "emotion_fer2013.keras")
    t.add_argument("--precision", choices=("mixed_bfloat16", "float32"), default="mixed_bfloat16",
                   help="the teachers' dtype policy (default: mixed_bfloat16, float32 where it fails)")
    t.add_argument("--student-lr", type=float, default=2e-3, help="the student's peak learning rate (AdamW)")
    t.add_argument("--limit", type=int, help="use only this many training images (a dry run on the CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.command == "pack":
        pack(args.data, args.votes, args.out)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        train(args.pack, args.out, args.budget, args.teachers, args.student_share, args.student_init, args.limit,
              args.precision, args.student_lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
