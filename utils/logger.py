"""Rank-0 run logging: a log file, TensorBoard scalars and a summary.csv with one row per epoch."""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

LOGGER_NAME = "classifier"


def setup_logging(log_file: str | Path | None, is_main: bool) -> logging.Logger:
    """Log INFO to stdout (and ``log_file``) on rank 0; other ranks log warnings only."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file is not None and is_main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class RunRecorder:
    """TensorBoard scalars plus summary.csv; a no-op on ranks other than 0."""

    def __init__(self, tensorboard_dir: str | Path, summary_csv: str | Path, enabled: bool):
        self.enabled = enabled
        self.summary_csv = Path(summary_csv)
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import
            self.writer = SummaryWriter(log_dir=str(tensorboard_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def epoch_row(self, row: dict[str, float | int]) -> None:
        """Append one epoch; a resumed run drops rows of epochs it is about to redo."""
        if not self.enabled:
            return
        rows = self._read_rows()
        rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [row]
        self.summary_csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.summary_csv.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in row} for r in rows)
        tmp.replace(self.summary_csv)

    def _read_rows(self) -> list[dict]:
        if not self.summary_csv.exists():
            return []
        with open(self.summary_csv, newline="") as handle:
            return list(csv.DictReader(handle))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
