"""Classification metrics and their reports (JSON, Markdown, PNG plots).

Metrics come from scikit-learn and plots from matplotlib.  This module needs
neither Keras nor TensorFlow, so ``convert evaluate`` can use it on a device.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from device.manifest import write_atomic


def compute(y_true: np.ndarray, probs: np.ndarray, labels: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """All reported metrics for integer labels and (N, classes) probabilities.

    Predictions range over all the model's labels (the confusion matrix has them all), while the
    averaged metrics cover the classes present in ``y_true``: a folder with 6 of the 7 classes is
    scored on those 6, and a prediction of the missing class counts as an error."""
    labels = list(labels)
    index = list(range(len(labels)))
    present = sorted(int(i) for i in np.unique(y_true))
    y_pred = probs.argmax(axis=1)
    cm = skm.confusion_matrix(y_true, y_pred, labels=index)
    support = cm.sum(axis=1)
    per_class_acc = {labels[i]: (float(cm[i, i] / support[i]) if support[i] else None) for i in index}
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=index, zero_division=0)

    def averaged(metric, average: str) -> float:
        return float(metric(y_true, y_pred, labels=present, average=average, zero_division=0))

    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "labels": labels,
        "classes_evaluated": [labels[i] for i in present],
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "per_class_accuracy": per_class_acc,
        "precision_macro": averaged(skm.precision_score, "macro"),
        "recall_macro": averaged(skm.recall_score, "macro"),
        "f1_macro": averaged(skm.f1_score, "macro"),
        "precision_weighted": averaged(skm.precision_score, "weighted"),
        "recall_weighted": averaged(skm.recall_score, "weighted"),
        "f1_weighted": averaged(skm.f1_score, "weighted"),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                  "support": int(s[i])} for i in index},
        "confusion_matrix": cm.tolist(),
        "roc_auc_ovr": roc_auc(y_true, probs, index),
    }
    return out


def roc_auc(y_true: np.ndarray, probs: np.ndarray, index: list[int]) -> float | None:
    present = np.unique(y_true)
    if len(present) < 2:
        return None  # undefined with one class
    if len(index) == 2:
        return float(skm.roc_auc_score(y_true, probs[:, 1]))
    if len(present) < len(index):  # one-vs-rest over the classes present, each against all other images
        return float(np.mean([skm.roc_auc_score(y_true == i, probs[:, i]) for i in present]))
    return float(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=index))


def summary_line(report: dict[str, Any]) -> str:
    """One line for the terminal: accuracy, macro-F1, mean recall and, on votes, what they add."""
    line = (f"accuracy {report['accuracy']:.4f}  macro-F1 {report['f1_macro']:.4f}  n={report['n']}  "
            f"mean recall {report['recall_macro']:.4f}")
    if "votes_cross_entropy" in report:
        line += (f"  (against the votes' majority; cross-entropy {report['votes_cross_entropy']:.4f}, "
                 f"accuracy on the folder's labels {report['folder_label_accuracy']:.4f})")
    return line


def markdown(report: dict[str, Any], title: str = "Evaluation") -> str:
    lines = [f"# {title}", "", f"- images: {report['n']}", f"- accuracy: {report['accuracy']:.4f}",
             f"- macro F1: {report['f1_macro']:.4f}", f"- mean recall: {report['recall_macro']:.4f}",
             f"- weighted F1: {report['f1_weighted']:.4f}"]
    if "votes_cross_entropy" in report:
        counts = report.get("vote_counts") or {}
        lines[3] = f"- accuracy against the FER+ majority: {report['accuracy']:.4f}"
        lines += [f"- mean cross-entropy against the vote distribution: {report['votes_cross_entropy']:.4f}",
                  f"- accuracy against the folder's own labels ({', '.join(report['folder_labels'])}): "
                  f"{report['folder_label_accuracy']:.4f}",
                  f"- left out: {counts.get('without_votes', 0)} without votes, {counts.get('unknown_or_nf', 0)} "
                  "whose majority is unknown or not a face"]
    if report.get("roc_auc_ovr") is not None:
        lines.append(f"- ROC AUC (one-vs-rest): {report['roc_auc_ovr']:.4f}")
    lines += ["", "| class | accuracy | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|---:|"]
    for name in report["labels"]:
        c, acc = report["per_class"][name], report["per_class_accuracy"][name]
        acc_text = "n/a" if acc is None else f"{acc:.4f}"
        lines.append(f"| {name} | {acc_text} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} "
                     f"| {c['support']} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(report["labels"]) + " |", "|---" * (len(report["labels"]) + 1) + "|"]
    for name, row in zip(report["labels"], report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    cm = np.array(report["confusion_matrix"])
    disp = skm.ConfusionMatrixDisplay(cm, display_labels=report["labels"])
    fig, ax = plt.subplots(figsize=(1.2 * len(report["labels"]) + 2, 1.2 * len(report["labels"]) + 1.5))
    disp.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45)
    ax.set_title(f"accuracy {report['accuracy']:.3f}, macro F1 {report['f1_macro']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, labels: list[str], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    positives = [1] if len(labels) == 2 else range(len(labels))
    for i in positives:
        if (y_true == i).any() and (y_true != i).any():
            skm.RocCurveDisplay.from_predictions(y_true == i, probs[:, i], name=labels[i], ax=ax)
    ax.set_title("ROC" + (" (one-vs-rest)" if len(labels) > 2 else f" ({labels[1]} positive)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history_csv: Path, path: Path) -> None:
    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    plt = _pyplot()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        for prefix in ("", "val_"):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out_dir: Path, y_true: np.ndarray, probs: np.ndarray,
          history_csv: Path | None = None, title: str = "Evaluation") -> None:
    """metrics.json, report.md, confusion_matrix.png, roc.png and (for a run) training_curves.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
    write_atomic(out_dir / "report.md", markdown(report, title).encode())
    plot_confusion(report, out_dir / "confusion_matrix.png")
    if len(np.unique(y_true)) > 1:
        plot_roc(y_true, probs, report["labels"], out_dir / "roc.png")
    if history_csv is not None and history_csv.exists():
        plot_history(history_csv, out_dir / "training_curves.png")
