"""Class weights for --weighted_loss: inverse training-set frequencies, or read from a file.

A weights file holds either one float per line in class order, or `class_name,weight` lines (a header line
`class,weight` is allowed). Blank lines and lines starting with `#` are skipped.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

AUTO = "auto"  # --weighted_loss without a file: weights from the training set's class frequencies


def class_weights_from_targets(targets: Sequence[int], class_names: Sequence[str]) -> list[float]:
    """Inverse class frequency, normalised so the weights average 1: w_c = (1 / n_c) / mean_k(1 / n_k)."""
    counts = Counter(int(t) for t in targets)
    absent = [name for i, name in enumerate(class_names) if counts[i] == 0]
    if absent:
        raise ValueError(f"--weighted_loss: class(es) {absent} have no training images, so inverse-frequency "
                         "weights are undefined; pass a weights file (--weighted_loss FILE) instead")
    inverse = [1.0 / counts[i] for i in range(len(class_names))]
    mean = sum(inverse) / len(inverse)
    return [w / mean for w in inverse]


def read_class_weights(path: str | os.PathLike, class_names: Sequence[str]) -> list[float]:
    """One weight per class from `path` (see the module docstring); errors name the file and the line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--weighted_loss: weights file {path!r} does not exist (give a file, or the bare "
                                "flag for weights from the class frequencies)")
    with open(path, encoding="utf-8") as handle:
        lines = [(n, line.strip()) for n, line in enumerate(handle, start=1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"--weighted_loss: {path} holds no weights")
    if any("," in line for _, line in lines):
        return _read_named_weights(path, lines, class_names)
    if len(lines) != len(class_names):
        raise ValueError(f"--weighted_loss: {path} has {len(lines)} weights (last on line {lines[-1][0]}) but the "
                         f"data has {len(class_names)} classes; give one per class in the order {list(class_names)}, "
                         "or `class_name,weight` lines")
    return [_parse_weight(path, n, line) for n, line in lines]


def _read_named_weights(path: str, lines: list[tuple[int, str]], class_names: Sequence[str]) -> list[float]:
    if lines[0][1].count(",") == 1 and not _is_number(lines[0][1].split(",")[1]):
        lines = lines[1:]  # a header line such as `class,weight`
    weights: dict[str, float] = {}
    for n, line in lines:
        name, sep, value = (part.strip() for part in line.rpartition(","))
        if not sep or not name:
            raise ValueError(f"--weighted_loss: {path} line {n}: expected `class_name,weight`, got {line!r}")
        if name not in class_names:
            raise ValueError(f"--weighted_loss: {path} line {n}: unknown class {name!r}; classes are "
                             f"{list(class_names)}")
        if name in weights:
            raise ValueError(f"--weighted_loss: {path} line {n}: class {name!r} is given twice")
        weights[name] = _parse_weight(path, n, value)
    missing = [name for name in class_names if name not in weights]
    if missing:
        raise ValueError(f"--weighted_loss: {path} has no weight for class(es) {missing}")
    return [weights[name] for name in class_names]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_weight(path: str, line_number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--weighted_loss: {path} line {line_number}: {text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):  # also rejects nan
        raise ValueError(f"--weighted_loss: {path} line {line_number}: weight {value} must be finite and >= 0")
    return value


def resolve_class_weights(spec: str | None, *, class_names: Sequence[str],
                          train_targets: Sequence[int]) -> list[float] | None:
    """The weights --weighted_loss asks for: None (off), `auto` (class frequencies) or a weights file path."""
    if spec is None:
        return None
    if spec == AUTO:
        return class_weights_from_targets(train_targets, class_names)
    return read_class_weights(spec, class_names)
