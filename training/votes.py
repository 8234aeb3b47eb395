"""FER+ votes: ten annotators per image, as training targets and as the yardstick of evaluation.

``ferplus_votes.csv`` (see the dataset's README) has one row per image:
``file,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``,
``file`` relative to the dataset's root and ten counts.  FER+'s protocols
(Barsoum et al., ICMI 2016) are followed:

- the *majority* is the top column (ties go to the first in FER+'s column order,
  as ``numpy.argmax`` in FER+'s own code); an image whose majority is
  ``unknown`` or ``NF`` is left out of training and of evaluation;
- the *probability* target is the vote distribution over the 8 expressions,
  ``unknown`` and ``NF`` votes dropped.

Labels follow the project's alphabetical convention (:data:`LABELS`).  A
dataset image is matched to its row by the last path components (``split/class/
file``), so the dataset can be given as its root or as its ``val/`` folder.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from training.data import DataError, Dataset, Splits

log = logging.getLogger(__name__)

COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
EXPRESSIONS = {"anger": "angry", "contempt": "contempt", "disgust": "disgust", "fear": "fear",
               "happiness": "happy", "neutral": "neutral", "sadness": "sad", "surprise": "surprise"}
LABELS = tuple(sorted(EXPRESSIONS.values()))  # angry, contempt, disgust, fear, happy, neutral, sad, surprise
# Column of COLUMNS for each of LABELS, in LABELS' order.
LABEL_COLUMNS = np.array([COLUMNS.index(next(c for c, n in EXPRESSIONS.items() if n == name)) for name in LABELS])
TARGETS = ("probability", "majority")


@dataclass(frozen=True)
class Votes:
    path: Path
    sha256: str
    rows: dict[str, np.ndarray]  # key (relative path) -> the 10 counts
    depth: int  # path components in each key
    lines: dict[str, int]  # key -> its line in the file, for error messages

    def lineage(self) -> dict[str, Any]:
        return {"file": str(self.path), "sha256": self.sha256, "rows": len(self.rows)}

    def lookup(self, file: str) -> np.ndarray | None:
        """The counts of a dataset file, matched by its last ``depth`` path components."""
        parts = Path(file).parts[-self.depth:]
        return self.rows.get("/".join(parts)) if len(parts) == self.depth else None


def read(path: str | Path) -> Votes:
    """Read and check a votes file; any bad row is a DataError naming the file and the row."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        lines = raw.decode("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"votes file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read votes file {path}: {exc}") from None
    reader = csv.reader(lines)
    header = next(reader, None)
    expected = ["file", *COLUMNS]
    if header is None or [h.strip() for h in header] != expected:
        raise DataError(f"{path} row 1: the columns must be {','.join(expected)} (FER+ votes), got "
                        f"{','.join(header or []) or 'nothing'}")
    rows: dict[str, np.ndarray] = {}
    lines: dict[str, int] = {}
    depth = None
    for number, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f"{path} row {number}"
        if len(row) != len(expected):
            raise DataError(f"{where}: {len(row)} fields, expected {len(expected)}")
        key = row[0].strip().replace("\\", "/")
        pure = PurePosixPath(key)
        if not key or pure.is_absolute() or ".." in pure.parts:
            raise DataError(f"{where}: file {key!r} must be a path relative to the dataset's root")
        try:
            counts = np.array([int(cell) for cell in row[1:]], dtype=np.int32)
        except ValueError:
            raise DataError(f"{where}: the counts must be whole numbers, got {','.join(row[1:])}") from None
        if (counts < 0).any() or counts.sum() <= 0:
            raise DataError(f"{where}: the counts must be non-negative and sum to a positive number, got "
                            f"{','.join(row[1:])}")
        if depth is None:
            depth = len(pure.parts)
        elif len(pure.parts) != depth:
            raise DataError(f"{where}: file {key!r} has {len(pure.parts)} path parts, the rows before it {depth}")
        if key in rows:
            raise DataError(f"{where}: file {key!r} appears twice")
        rows[key], lines[key] = counts, number
    if not rows:
        raise DataError(f"{path} has no votes")
    return Votes(path, hashlib.sha256(raw).hexdigest(), rows, depth, lines)


def majority_column(counts: np.ndarray) -> np.ndarray:
    """(N, 10) counts -> the index into COLUMNS of each image's top vote (first column on a tie)."""
    return np.asarray(counts).argmax(axis=1)


def distributions(counts: np.ndarray) -> np.ndarray:
    """(N, 10) counts -> (N, 8) vote distributions over LABELS (unknown and NF dropped; all-zero rows stay 0)."""
    expressions = np.asarray(counts, dtype="float64")[:, LABEL_COLUMNS]
    total = expressions.sum(axis=1, keepdims=True)
    return (expressions / np.where(total > 0, total, 1)).astype("float32")


def usable(counts: np.ndarray) -> np.ndarray:
    """Images whose majority is one of the 8 expressions (FER+ leaves out unknown and NF majorities)."""
    return np.isin(majority_column(counts), LABEL_COLUMNS)


def majority_labels(counts: np.ndarray) -> np.ndarray:
    """Index into LABELS of each image's majority (only meaningful where :func:`usable`)."""
    to_label = np.full(len(COLUMNS), -1, dtype=np.int32)
    to_label[LABEL_COLUMNS] = np.arange(len(LABELS))
    return to_label[majority_column(counts)]


def check_arrangement(votes: Votes, data: Dataset, missing: list[str]) -> None:
    """An image without votes whose file name the votes give in another folder (another class, another split)
    means the votes describe another arrangement of the files: an error naming the row."""
    names: dict[str, list[str]] = {}
    for key in votes.rows:
        names.setdefault(PurePosixPath(key).name, []).append(key)
    in_data: dict[str, int] = {}
    for file in data.files:
        in_data[Path(file).name] = in_data.get(Path(file).name, 0) + 1
    for file in missing:
        name = Path(file).name
        keys = names.get(name, [])
        if in_data[name] == 1 and len(keys) == 1:  # FER2013 reuses a few names across classes: those are skipped
            raise DataError(f"{votes.path} row {votes.lines[keys[0]]}: file {keys[0]} is "
                            f"{'/'.join(Path(file).parts[-votes.depth:])} in the dataset; the votes belong to "
                            "another arrangement of the files")


def attach(data: Dataset, votes: Votes, what: str = "data", labels: tuple[str, ...] = LABELS) -> Dataset:
    """``data`` relabelled by the votes: ``labels`` as classes (FER+'s 8, or a model's that are some of them),
    the majority as ``y``, the vote distribution over ``labels`` as ``votes``, and the folder's own labels kept
    as ``folder_y``/``folder_labels``.  Images without votes are counted and skipped with a warning; those
    whose majority is unknown or NF, or not one of ``labels`` (contempt, for a 7-class model), are left out."""
    if not set(labels) <= set(LABELS):
        raise DataError(f"the model's classes {list(labels)} are not among the FER+ expressions {list(LABELS)}")
    if not data.files:
        raise DataError("votes need the images' file names (a class-per-folder dataset, not a CSV)")
    counts = [votes.lookup(f) for f in data.files]
    has = np.array([c is not None for c in counts])
    if not has.any():
        raise DataError(f"{votes.path}: none of its {len(votes.rows)} rows matches any of the {len(data)} images "
                        f"of {what}")
    check_arrangement(votes, data, [f for f, c in zip(data.files, counts) if c is None])
    missing = int((~has).sum())
    if missing:
        log.warning("%s: %d of %d images have no votes in %s; skipped", what, missing, len(data), votes.path)
    table = np.zeros((len(data), len(COLUMNS)), dtype=np.int32)
    table[has] = np.stack([c for c in counts if c is not None])
    keep = has & usable(table)
    unclear = int((has & ~keep).sum())
    if unclear:
        log.info("%s: %d images whose majority is unknown or not a face are left out", what, unclear)
    columns = [LABELS.index(name) for name in labels]
    major = majority_labels(table)
    other = keep & ~np.isin(major, columns)
    if other.any():
        log.info("%s: %d images whose majority is not one of the model's classes are left out", what, other.sum())
    index = np.flatnonzero(keep & ~other)
    to_model = {c: i for i, c in enumerate(columns)}
    dist = distributions(table[index])[:, columns]
    dist /= np.maximum(dist.sum(axis=1, keepdims=True), 1e-12)
    counts = {"without_votes": missing, "unknown_or_nf": unclear, "kept": int(len(index))}
    if other.any():
        counts["not_a_model_class"] = int(other.sum())
    return dataclasses.replace(
        data, x=data.x[index], y=np.array([to_model[c] for c in major[index]], dtype=np.int32),
        labels=tuple(labels), files=[data.files[i] for i in index], votes=dist.astype("float32"),
        folder_y=data.y[index], folder_labels=data.labels, vote_counts=counts)


def attach_splits(splits: Splits, votes: Votes) -> Splits:
    parts = {name: attach(getattr(splits, name), votes, name) if getattr(splits, name) is not None else None
             for name in ("train", "val", "test")}
    return Splits(parts["train"], parts["val"], parts["test"], LABELS)


def metrics(data: Dataset, probs: np.ndarray) -> dict[str, Any]:
    """What evaluation on votes adds to the usual metrics (which score against the majority, ``data.y``):
    the mean cross-entropy against the vote distribution, and accuracy against the folder's own labels
    (the model's top class among the folder's classes)."""
    probs = np.asarray(probs, dtype="float64")
    cross_entropy = float(np.mean(-(data.votes * np.log(np.clip(probs, 1e-7, 1.0))).sum(axis=1)))
    truth_names = [data.folder_labels[i] for i in data.folder_y]
    folder_names = sorted(set(truth_names) & set(data.labels))
    columns = np.array([data.labels.index(name) for name in folder_names])
    picked = columns[probs[:, columns].argmax(axis=1)]
    truth = np.array([data.labels.index(name) if name in data.labels else -1 for name in truth_names])
    return {"votes_cross_entropy": cross_entropy,
            "folder_label_accuracy": float(np.mean(picked == truth)),
            "folder_labels": folder_names,
            "vote_counts": dict(data.vote_counts or {})}
