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


ECE_BINS = 15  # equal-width confidence bins, as Guo et al. 2017 (On Calibration of Modern Neural Networks)


def classification_report(probs: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict:
    """Top-1/top-5, per-class precision/recall/F1/support, AUROC and average precision (one-vs-rest), expected
    calibration error with its reliability bins, and the confusion matrix (scikit-learn)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    scores = torch.from_numpy(probs)
    preds = predicted_labels(scores).numpy()
    correct = topk_correct(scores, torch.from_numpy(targets))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0)
    n = len(targets)
    auroc, ap = one_vs_rest_scores(probs, targets)
    ece, bins = calibration(probs, targets)
    return {
        "samples": n,
        "top1": 100.0 * correct[1] / n,
        "top5": 100.0 * correct[5] / n,
        "macro_f1": float(np.mean(f1)),
        "macro_auroc": _mean_defined(auroc),
        "macro_ap": _mean_defined(ap),
        "ece": ece,
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                             "auroc": a, "ap": v}
                      for name, p, r, f, s, a, v in zip(class_names, precision, recall, f1, support, auroc, ap)},
        "reliability": bins,
        "confusion_matrix": confusion_matrix(targets, preds, labels=labels).tolist(),
    }


def one_vs_rest_scores(probs: np.ndarray, targets: np.ndarray) -> tuple[list, list]:
    """Per class: AUROC and average precision of its probability against "this class or not". None for a class
    with no positive or no negative sample here (both are undefined there); the macro means skip those."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    auroc, ap = [], []
    for c in range(probs.shape[1]):
        positive = targets == c
        if positive.all() or not positive.any():
            auroc.append(None)
            ap.append(None)
            continue
        auroc.append(float(roc_auc_score(positive, probs[:, c])))
        ap.append(float(average_precision_score(positive, probs[:, c])))
    return auroc, ap


def calibration(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-1 confidence (sum over bins of |accuracy - confidence| weighted by
    the bin's share of samples) and the bins themselves, for the reliability diagram."""
    confidence = probs.max(axis=1)
    hit = (predicted_labels(torch.from_numpy(probs)).numpy() == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        accuracy = float(hit[members].mean()) if count else None
        mean_confidence = float(confidence[members].mean()) if count else None
        if count:
            ece += count / len(targets) * abs(accuracy - mean_confidence)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count, "accuracy": accuracy,
                     "confidence": mean_confidence})
    return float(ece), rows


def ood_metrics(probs: torch.Tensor, ood_probs: torch.Tensor, calibration=None) -> dict:
    """How well the top class probability tells in-distribution images (``probs``) from images of no trained class
    (``ood_probs``): AUROC with in-distribution as the positive class, the false-positive rate of the images of no
    class at 95% true-positive rate; with a calibration record (utils/calibration.py), the share of each answered
    'unknown'."""
    from sklearn.metrics import roc_auc_score

    known, unknown = probs.max(dim=1).values.double().numpy(), ood_probs.max(dim=1).values.double().numpy()
    truth = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
    out = {"images": int(len(unknown)), "auroc": float(roc_auc_score(truth, np.concatenate([known, unknown]))),
           "fpr_at_95_tpr": float((unknown >= np.quantile(known, 0.05)).mean())}
    if calibration is not None and calibration.threshold is not None:
        out["unknown_share"] = float((unknown < calibration.threshold).mean())
        out["known_accepted_share"] = float((known >= calibration.threshold).mean())
    return out


def percent_text(value: float | None) -> str:
    """A percentage for a log line: '94.12%', or 'n/a' where there was nothing to measure."""
    return "n/a" if value is None else f"{value:.2f}%"


def _mean_defined(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def write_report(report: dict, class_names: list[str], out_dir: str | Path) -> list[Path]:
    """Write report.json, confusion_matrix.csv, confusion_matrix.png and reliability_diagram.png (when the
    report has its bins); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "confusion_matrix.csv", out / "confusion_matrix.png"]
    if report.get("reliability"):
        paths.append(out / "reliability_diagram.png")
        plot_reliability(report["reliability"], report["ece"], paths[3])
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


def plot_reliability(bins: list[dict], ece: float, path: Path) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with each bin's sample count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    filled = [b for b in bins if b["count"]]
    width = bins[0]["high"] - bins[0]["low"]
    ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
           edgecolor="black", color="tab:blue", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for b in filled:
        ax.text(b["low"] + width / 2, 0.02, str(b["count"]), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, ECE {100 * ece:.2f}%")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
