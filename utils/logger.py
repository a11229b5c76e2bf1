"""Rank-0 run logging: a log file, TensorBoard scalars and a summary.csv with one row per epoch."""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

LOGGER_NAME = "classifier"


FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


class _Buffer(logging.Handler):
    """Keeps the records logged before the run folder exists, for the log file once it does."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(log_file: str | Path | None, is_main: bool) -> logging.Logger:
    """Log INFO to stdout (and ``log_file``) on rank 0; other ranks log warnings only. Without ``log_file`` the
    records are also kept until ``attach_log_file`` names the file."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(FORMAT)
    logger.addHandler(stream)
    if log_file is not None:
        attach_log_file(log_file, is_main)
    elif is_main:
        logger.addHandler(_Buffer())
    return logger


def attach_log_file(log_file: str | Path, enabled: bool) -> None:
    """From now on this process also logs to ``log_file`` (appending: a resumed run continues its log), which
    first receives the records kept since setup_logging. A no-op where not ``enabled``."""
    if not enabled:
        return
    logger = logging.getLogger(LOGGER_NAME)
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(FORMAT)
    for buffer in [h for h in logger.handlers if isinstance(h, _Buffer)]:
        for record in buffer.records:
            handler.emit(record)
        logger.removeHandler(buffer)
    logger.addHandler(handler)


def detach_log_files(folder: str | Path) -> None:
    """Stop logging to the files in ``folder`` (a job running several runs closes each run's log after it)."""
    logger = logging.getLogger(LOGGER_NAME)
    folder = Path(folder).resolve()
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        if Path(handler.baseFilename).parent == folder:
            logger.removeHandler(handler)
            handler.close()


def record_failure(error: BaseException) -> None:
    """Write the error with its traceback to the log files only (the console shows one line)."""
    logger = logging.getLogger(LOGGER_NAME)
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    record = logger.makeRecord(LOGGER_NAME, logging.ERROR, __file__, 0, "%s: %s", (type(error).__name__, error),
                               (type(error), error, error.__traceback__))
    for handler in files:
        handler.handle(record)


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
