"""What every launcher shares: its one-line error type, and the training command a restart can continue."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import Config


class LauncherError(Exception):
    """A mistake in the launcher's command line or environment: one ``error:`` line, exit code 2."""


def restartable_training(argv: list[str], *, launcher: str, restart: str) -> tuple[list[str], "Config"]:
    """main.py's training flags as every process runs them (``--resume auto`` added), and their config.

    Refuses, before anything starts, a command a restart could not continue: another job, no ``--name``, a
    ``--resume`` of other weights, and the recipe's own cross-flag mistakes. ``restart`` names what restarts the
    run in the messages ("Ray's restarts", "a requeued job").
    """
    from applications.train import check
    from config import chosen_jobs, parse_config

    cfg, _ = parse_config(argv)
    if chosen_jobs(cfg):
        raise LauncherError(f"{launcher} runs training; drop {', '.join(j.flag for j in chosen_jobs(cfg))} "
                            "(run other jobs with python main.py)")
    if not cfg.name:
        raise LauncherError(f"name the run with --name NAME after --: {restart} continue(s) "
                            "CHECKPOINT_DIR/NAME/last.pth through --resume auto")
    if cfg.resume not in (None, "auto"):
        raise LauncherError(f"--resume {cfg.resume}: {restart} must continue its own run, so the launcher uses "
                            "--resume auto; start from other weights with --pretrained")
    check(cfg)  # the recipe's cross-flag rules, here rather than once per process and restart
    return (argv if cfg.resume else [*argv, "--resume", "auto"]), cfg
