"""Calibrated confidence and the answers built on it: temperature scaling, a reject threshold ("unknown") and split
conformal prediction sets. The one owner of the ``Calibration`` record that checkpoints and every export carry.

Fitting happens on the run's val split, cut in two fixed halves (even and odd positions): the temperature is fitted on
the first half, the reject threshold and the conformal quantile on the second. Split conformal's coverage guarantee
needs a score that does not depend on the images its quantile comes from, so the temperature must not be fitted on them.

The answers (``answer_labels``, ``prediction_sets``) take calibrated probabilities: a checkpoint applies the temperature
to its logits, an export has it baked into its graph. This module imports only torch and numpy, so the demo and the
server (which load exported files only) share it with training.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

UNKNOWN = "unknown"
ANSWERS = ("top", "unknown", "set")  # the most likely class; it or "unknown"; the conformal set of classes


@dataclass
class Calibration:
    """What ``--calibrate`` fitted: ``temperature`` divides the logits; an image whose top calibrated probability is
    below ``threshold`` is answered "unknown" (``coverage`` of val images were above it); a conformal set holds the
    classes whose calibrated probability is at least ``1 - qhat`` (it covers the true class of a new image with
    probability at least ``1 - alpha``)."""

    temperature: float = 1.0
    threshold: float | None = None
    coverage: float | None = None
    qhat: float | None = None
    alpha: float | None = None
    images: int = 0  # val images it was fitted on (both halves)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "Calibration | None":
        """The record from a checkpoint or an export's metadata; None when the model was never calibrated."""
        if not values:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def halves(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the two fixed halves of ``count`` val images: even positions fit the temperature, odd ones the
    threshold and the conformal quantile."""
    order = torch.arange(count)
    return order[0::2], order[1::2]


def scores_to_probs(logits: torch.Tensor, criterion: str, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities from logits at a temperature: softmax, or normalised sigmoids for the bce model."""
    if not (isinstance(temperature, float) and temperature == 1.0):
        logits = logits / temperature
    if criterion == "bce":
        probs = torch.sigmoid(logits)
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.softmax(logits, dim=1)


def nll(logits: torch.Tensor, targets: torch.Tensor, criterion: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes."""
    probs = scores_to_probs(logits.float(), criterion, temperature)
    return float(-probs.gather(1, targets.view(-1, 1)).clamp_min(1e-12).log().mean())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, criterion: str = "ce") -> float:
    """The temperature that minimises the NLL of ``logits`` (Guo et al. 2017), by L-BFGS on log T from T = 1.
    One parameter: it changes confidence, never the ranking of classes, so top-1 stays the same."""
    logits, targets = logits.detach().double(), targets.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        probs = scores_to_probs(logits, criterion, log_t.exp())
        loss = -probs.gather(1, targets.view(-1, 1)).clamp_min(1e-300).log().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature scaling did not converge (T = {temperature})")
    return temperature


def coverage_threshold(probs: torch.Tensor, coverage: float) -> float:
    """The top-probability threshold that accepts ``coverage`` of these images: the lower ``1 - coverage`` quantile
    of their top probabilities (accepted: top probability >= threshold)."""
    top = probs.max(dim=1).values.double().sort().values
    rejected = int(math.floor((1.0 - coverage) * len(top)))
    return float(top[min(rejected, len(top) - 1)])


def conformal_quantile(probs: torch.Tensor, targets: torch.Tensor, alpha: float) -> float:
    """Split conformal's quantile of the scores 1 - p(true class) (Sadinle et al. 2019; Angelopoulos & Bates 2021):
    the ceil((n + 1)(1 - alpha)) / n empirical quantile, so that a new image's set covers its class with probability
    >= 1 - alpha. Too few images for that level give 1: every class is in every set."""
    scores = (1.0 - probs.gather(1, targets.view(-1, 1)).squeeze(1)).double().sort().values
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - alpha))
    return 1.0 if rank > n else float(scores[rank - 1])


def temperature_of(record: dict | None) -> float:
    """The temperature of a checkpoint's calibration record, 1 for a model never calibrated."""
    calibration = Calibration.from_dict(record)
    return calibration.temperature if calibration else 1.0


NEEDS = {"unknown": ("threshold", "reject threshold"), "set": ("qhat", "conformal quantile")}  # answer -> fitted part


def can_answer(calibration: Calibration | None, answer: str) -> bool:
    """Whether a model with this calibration (None: never calibrated) can give ``answer`` (one of ANSWERS)."""
    part = NEEDS.get(answer)
    return part is None or (calibration is not None and getattr(calibration, part[0]) is not None)


def require_answer(calibration: Calibration | None, answer: str) -> None:
    """Refuse, with what to do, an answer the model cannot give: an unknown mode, or "unknown" / "set" without the
    threshold / quantile --calibrate fits. --predict, the demo and the server all ask here."""
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer {answer!r}; choose from {', '.join(ANSWERS)}")
    if not can_answer(calibration, answer):
        part = NEEDS[answer]
        raise ValueError(f"answer {answer!r} needs a calibrated model, and this one has no {part[1]}; fit one with "
                         "`main.py --calibrate --resume CKPT` (and export again)")


def answer_labels(probs: torch.Tensor, calibration: Calibration | None) -> torch.Tensor:
    """Top-1 class per image (argmax, lowest index on a tie), or -1 ("unknown") where the top probability is below
    the calibrated threshold."""
    require_answer(calibration, "unknown")
    top, labels = probs.max(dim=1)
    return torch.where(top >= calibration.threshold, labels, torch.full_like(labels, -1))


def prediction_sets(probs: torch.Tensor, calibration: Calibration | None) -> torch.Tensor:
    """Boolean (images, classes) mask of each image's conformal set: classes with probability >= 1 - qhat."""
    require_answer(calibration, "set")
    return probs >= 1.0 - calibration.qhat


def set_names(mask: torch.Tensor, class_names: list[str]) -> list[list[str]]:
    """Class names of each image's set, most likely class order not implied (class index order)."""
    return [[class_names[c] for c in row.nonzero().flatten().tolist()] for row in mask]


def answer_text(probs: torch.Tensor, class_names: list[str], calibration: Calibration | None,
                answer: str) -> list[str]:
    """One answer per image as text: the top class, that or "unknown", or the set joined by '|' ("unknown" when
    empty)."""
    require_answer(calibration, answer)
    if answer == "top":
        return [class_names[i] for i in probs.argmax(dim=1).tolist()]
    if answer == "unknown":
        return [class_names[i] if i >= 0 else UNKNOWN for i in answer_labels(probs, calibration).tolist()]
    return ["|".join(names) or UNKNOWN for names in set_names(prediction_sets(probs, calibration), class_names)]


def selective_metrics(probs: torch.Tensor, targets: torch.Tensor, calibration: Calibration) -> dict:
    """On labelled images: the share accepted and the top-1 on those (reject option), the conformal sets' coverage
    of the true class with its 95% binomial (Wilson) interval, and their mean size."""
    out: dict = {}
    if calibration.threshold is not None:
        labels = answer_labels(probs, calibration)
        accepted = labels >= 0
        out["accepted"] = float(accepted.double().mean())
        out["accepted_top1"] = float((labels[accepted] == targets[accepted]).double().mean()) * 100 \
            if bool(accepted.any()) else None
    if calibration.qhat is not None:
        sets = prediction_sets(probs, calibration)
        covered = int(sets.gather(1, targets.view(-1, 1)).sum())
        out["set_coverage"] = covered / len(targets)
        out["set_coverage_ci95"] = list(wilson_interval(covered, len(targets)))
        out["set_mean_size"] = float(sets.sum(dim=1).double().mean())
        out["set_target"] = 1.0 - calibration.alpha
        if calibration.images:
            out["set_coverage_expected95"] = list(conformal_coverage_interval(calibration.images // 2,
                                                                              calibration.alpha, len(targets)))
    return out


def conformal_coverage_interval(n_cal: int, alpha: float, n_test: int, z: float = 1.959964) -> tuple[float, float]:
    """Where split conformal puts the coverage measured on ``n_test`` new images, 95% of the time, for a quantile
    taken from ``n_cal`` images: the coverage given the calibration images is Beta(n + 1 - l, l) with
    l = floor((n + 1) alpha) (Angelopoulos & Bates 2021, section 3.2), and the test images add binomial noise around
    it. A normal approximation of that beta-binomial; a measured coverage outside it is a sign of a shift between
    val and the new images."""
    low_rank = math.floor((n_cal + 1) * alpha)
    if low_rank < 1:
        return (1.0, 1.0)
    a, b = n_cal + 1 - low_rank, low_rank
    mean = a / (a + b)
    beta_var = a * b / ((a + b) ** 2 * (a + b + 1))
    var = beta_var + (mean * (1 - mean) - beta_var) / n_test
    return (max(0.0, mean - z * math.sqrt(var)), min(1.0, mean + z * math.sqrt(var)))


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))
