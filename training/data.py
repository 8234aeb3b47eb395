"""Load a labelled image dataset into memory: class-per-folder trees or FER2013's CSV.

Every loader returns the same thing, a :class:`Splits` of uint8 arrays at the
model's input size, with class indices in alphabetical order of class name.
Images are decoded once; FER2013 at 64x64 grayscale is about 120 MB.
"""

from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from device.preprocess import to_model_image  # one definition, shared with the device

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_NAMES = ("train", "val", "test")
# FER2013's CSV label indices (see the dataset's README).
FER_CSV_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_CSV_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


class DataError(Exception):
    """A dataset that cannot be used; reported as one line by the CLI."""


@dataclass
class Dataset:
    x: np.ndarray  # uint8, (N, size, size, channels)
    y: np.ndarray  # int32 class indices into labels
    labels: tuple[str, ...]
    files: list[str] = field(default_factory=list)
    skipped: int = 0  # unreadable images
    # With FER+ votes (training/votes.py): y is the majority, these the vote distribution and the folder's labels.
    votes: np.ndarray | None = None  # (N, classes) float32
    folder_y: np.ndarray | None = None
    folder_labels: tuple[str, ...] | None = None
    vote_counts: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        return {name: int((self.y == i).sum()) for i, name in enumerate(self.labels)}


@dataclass
class Splits:
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    labels: tuple[str, ...]

    @property
    def skipped(self) -> int:
        return sum(d.skipped for d in (self.train, self.val, self.test) if d is not None)


def read_image(path: str | Path, size: int, color: str) -> np.ndarray | None:
    """Decode and resize one image; None when it cannot be decoded."""
    flag = cv2.IMREAD_GRAYSCALE if color == "grayscale" else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        return None
    return to_model_image(image, size, color, bgr=True)


def list_class_folder(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """``root/<class>/*.jpg`` -> (alphabetical labels, [(file, index)])."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} needs at least 2 class folders (<class>/*.jpg), found {len(classes)}")
    items = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class {name!r} in {root} has no images")
        items += [(f, index) for f in files]
    return tuple(classes), items


def load_folder(root: Path, size: int, color: str, labels: tuple[str, ...] | None = None,
                limit_per_class: int | None = None, seed: int = 0) -> Dataset:
    found, items = list_class_folder(root)
    if labels is not None and found != labels:
        raise DataError(f"classes in {root} {list(found)} differ from the expected {list(labels)}")
    if limit_per_class:
        items = _limit_per_class(items, limit_per_class, seed)
    with ThreadPoolExecutor(max_workers=4) as pool:  # cv2 releases the GIL while decoding
        images = list(pool.map(lambda item: read_image(item[0], size, color), items))
    keep = [i for i, image in enumerate(images) if image is not None]
    skipped = len(items) - len(keep)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s)", root, skipped)
    if not keep:
        raise DataError(f"no readable images in {root}")
    return Dataset(
        x=np.stack([images[i] for i in keep]),
        y=np.array([items[i][1] for i in keep], dtype=np.int32),
        labels=found,
        files=[str(items[i][0]) for i in keep],
        skipped=skipped,
    )


def load_folder_for(root: Path, size: int, color: str, model_labels: tuple[str, ...],
                    limit_per_class: int | None = None, seed: int = 0) -> Dataset:
    """A class-per-folder tree whose classes are some of the model's (6 of 7 with no neutral, as in
    many public sets): ``y`` indexes the model's labels, and ``labels`` are the model's."""
    found, _ = list_class_folder(root)
    unknown = [name for name in found if name not in model_labels]
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(map(repr, unknown))} not among the model's classes "
                        f"{list(model_labels)}")
    data = load_folder(root, size, color, limit_per_class=limit_per_class, seed=seed)
    remap = np.array([model_labels.index(name) for name in data.labels], dtype=np.int32)
    return Dataset(x=data.x, y=remap[data.y], labels=tuple(model_labels), files=data.files, skipped=data.skipped)


def _limit_per_class(items: list[tuple[Path, int]], limit: int, seed: int) -> list[tuple[Path, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for index in sorted({i for _, i in items}):
        group = [item for item in items if item[1] == index]
        picks = rng.permutation(len(group))[:limit]
        out += [group[i] for i in sorted(picks)]
    return out


def load_fer_csv(path: Path, size: int, color: str) -> dict[str, Dataset]:
    """FER2013's ``emotion,pixels,Usage`` CSV -> datasets keyed by split name."""
    labels = tuple(sorted(FER_CSV_LABELS))
    remap = {i: labels.index(name) for i, name in enumerate(FER_CSV_LABELS)}
    rows: dict[str, tuple[list[np.ndarray], list[int]]] = {}
    skipped = 0
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"emotion", "pixels"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path} is not a FER2013 CSV: missing column(s) {', '.join(sorted(missing))}"
                                f" (expected emotion,pixels,Usage)")
            for row in reader:
                try:
                    pixels = np.array(row["pixels"].split(), dtype=np.uint8)
                    side = int(round(len(pixels) ** 0.5))
                    image = pixels.reshape(side, side)
                    label = remap[int(row["emotion"])]
                except (ValueError, KeyError):
                    skipped += 1
                    continue
                split = FER_CSV_USAGE.get(row.get("Usage") or "Training", "train")
                xs, ys = rows.setdefault(split, ([], []))
                xs.append(to_model_image(image, size, color))
                ys.append(label)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if skipped:
        log.warning("%s: skipped %d malformed row(s)", path, skipped)
    if not rows:
        raise DataError(f"{path} has no usable rows")
    out = {split: Dataset(np.stack(xs), np.array(ys, dtype=np.int32), labels) for split, (xs, ys) in rows.items()}
    out.setdefault("train", next(iter(out.values()))).skipped = skipped
    return out


def load_splits(data: str | Path, size: int, color: str, val_fraction: float = 0.1,
                seed: int = 0, val_dir: str | Path | None = None,
                limit_per_class: int | None = None) -> Splits:
    """Load any supported layout; split stratified with ``seed`` when no split is given."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"dataset not found: {data}")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data} is neither a folder nor a FER2013 .csv")
        parts = load_fer_csv(data, size, color)
    elif (data / "train").is_dir():
        train = load_folder(data / "train", size, color, limit_per_class=limit_per_class, seed=seed)
        parts = {"train": train}
        for name in ("val", "test"):
            if (data / name).is_dir():
                parts[name] = load_folder(data / name, size, color, train.labels, limit_per_class, seed)
    else:
        parts = {"train": load_folder(data, size, color, limit_per_class=limit_per_class, seed=seed)}
    train = parts["train"]
    if val_dir is not None:
        parts["val"] = load_folder(Path(val_dir), size, color, train.labels, limit_per_class, seed)
    if "val" not in parts:
        train, parts["val"] = stratified_split(train, val_fraction, seed)
    return Splits(train, parts.get("val"), parts.get("test"), train.labels)


def stratified_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    from sklearn.model_selection import train_test_split  # [train] only: reading images needs no scikit-learn

    index = np.arange(len(ds))
    try:
        a, b = train_test_split(index, test_size=fraction, random_state=seed, stratify=ds.y)
    except ValueError as exc:
        raise DataError(f"cannot split the data into train and val: {exc}") from None
    a, b = np.sort(a), np.sort(b)

    def take(idx: np.ndarray) -> Dataset:
        files = [ds.files[i] for i in idx] if ds.files else []
        return Dataset(ds.x[idx], ds.y[idx], ds.labels, files)

    train = take(a)
    train.skipped = ds.skipped
    return train, take(b)
