"""Classification metrics on gathered predictions and the files of an evaluation report.

One prediction rule everywhere: the predicted class is the highest score, and a tie goes to the lowest class
index (what ``torch.argmax`` and ``numpy.argmax`` return). Top-k ranks by the same rule, so top-1 always equals
the confusion matrix's diagonal; ``torch.topk`` breaks ties in no documented order, and bf16 logits tie often.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def ranked_classes(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best classes of each row of (N, C) ``scores``, best first; equal scores rank by ascending class
    index (a stable descending sort), so column 0 is the argmax."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def predicted_labels(scores: torch.Tensor) -> torch.Tensor:
    """The predicted class of each row: the highest score, the lowest class index on a tie."""
    return ranked_classes(scores, 1)[:, 0]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the top-k scores, for each k (k capped at the class count);
    ties are ranked as in ``ranked_classes``, so the top-1 count agrees with ``predicted_labels``."""
    maxk = min(max(ks), logits.shape[1])
    hits = ranked_classes(logits, maxk).eq(targets.view(-1, 1))
    return {k: int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks}


def classification_report(probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict:
    """Top-1/top-5, per-class precision/recall/F1/support and the confusion matrix (scikit-learn)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    scores = torch.from_numpy(probs)
    preds = predicted_labels(scores).numpy()
    correct = topk_correct(scores, torch.from_numpy(targets))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0)
    n = len(targets)
    return {
        "samples": n,
        "top1": 100.0 * correct[1] / n,
        "top5": 100.0 * correct[5] / n,
        "macro_f1": float(np.mean(f1)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(targets, preds, labels=labels).tolist(),
    }


def write_report(report: dict, class_names: list[str], out_dir: str | Path) -> list[Path]:
    """Write report.json, confusion_matrix.csv and confusion_matrix.png; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "confusion_matrix.csv", out / "confusion_matrix.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    matrix = np.asarray(report["confusion_matrix"])
    with open(paths[1], "w") as handle:
        handle.write("true\\pred," + ",".join(class_names) + "\n")
        for name, row in zip(class_names, matrix):
            handle.write(name + "," + ",".join(str(int(v)) for v in row) + "\n")
    _plot_confusion(matrix, class_names, paths[2])
    return paths


def _plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    if len(class_names) <= 30:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
