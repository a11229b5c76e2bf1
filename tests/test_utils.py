import os
import random
import stat

import numpy as np
import pytest
import torch

from config import Config, explicit_flags, build_parser, parse_config
from utils.checkpoint import Checkpoint, atomic_write, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from utils.distributed import gather_predictions
from utils.metrics import classification_report, predicted_labels, topk_correct, write_report


def test_checkpoint_roundtrip_under_weights_only(tmp_path):
    torch.manual_seed(0)
    state = Checkpoint(model={"w": torch.randn(3)}, config=Config().to_dict(), rng=capture_rng_state(),
                       class_names=["a", "b"], preprocessing={}, epoch=3)
    path = tmp_path / "run" / "last.pth"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)  # weights_only=True inside
    assert torch.equal(loaded.model["w"], state.model["w"])
    assert Config.from_dict(loaded.config) == Config() and loaded.epoch == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temp file left behind


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_write_gives_the_mode_of_a_plain_open_and_replaces_content(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "wb") as handle:
            handle.write(b"x")
        atomic_write(tmp_path / "last.pth", lambda handle: handle.write(b"first"))
        atomic_write(tmp_path / "last.pth", lambda handle: handle.write(b"second"))
    finally:
        os.umask(previous)
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("last.pth", "plain.txt")]
    assert modes == [0o666 & ~umask] * 2  # mkstemp gave 0o600
    assert (tmp_path / "last.pth").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "plain.txt"]


def test_atomic_write_syncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    path, synced = tmp_path / "last.pth", []
    real_fsync, real_open = os.fsync, os.open

    def fsync(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        if synced[-1] == "folder":
            assert path.read_bytes() == b"new"  # already renamed into place
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(path, lambda handle: handle.write(b"new"))
    assert synced == ["file", "folder"]

    def open_files_only(name, flags, *args):  # as on Windows, where a folder cannot be opened
        if os.path.isdir(name):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, flags, *args)
    monkeypatch.setattr(os, "open", open_files_only)
    atomic_write(path, lambda handle: handle.write(b"newer"))
    assert path.read_bytes() == b"newer" and synced == ["file", "folder", "file"]


def test_rng_state_restores_torch_numpy_python():
    state = capture_rng_state()
    first = (torch.rand(2), np.random.rand(2), random.random())
    restore_rng_state(state)
    second = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    first = Checkpoint(model={}, config={}, class_names=[], preprocessing={}, epoch=1)
    save_checkpoint(first, path)
    with pytest.raises(Exception):
        save_checkpoint(first.replace(metrics={"bad": lambda: 0}), path)  # not picklable
    assert load_checkpoint(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pth"):
        load_checkpoint(bad)
    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(1)}, weights)
    with pytest.raises(RuntimeError, match="--pretrained"):
        load_checkpoint(weights)


def test_explicit_flags_lists_only_typed_options():
    argv = ["--epochs", "4", "-b", "8", "--aug", "--image_size", "28", "28"]
    assert explicit_flags(build_parser(), argv) == {"epochs", "batch_size", "aug", "image_size"}
    cfg, explicit = parse_config(argv)
    assert cfg.epochs == 4 and cfg.batch_size == 8 and cfg.aug and cfg.image_size == [28, 28]


def test_gather_predictions_drops_sampler_padding_single_process():
    idx = torch.tensor([3, 0, 2, 1, 0])  # index 0 repeated, as DistributedSampler padding does
    logits = torch.arange(10.0).view(5, 2)
    unique, gathered = gather_predictions(idx, logits)
    assert unique.tolist() == [0, 1, 2, 3]
    assert gathered[:, 0].tolist() == [2.0, 6.0, 4.0, 0.0]


def test_topk_and_report(tmp_path):
    logits = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    targets = torch.tensor([0, 2, 1, 1])
    assert topk_correct(logits, targets, ks=(1, 2, 5)) == {1: 2, 2: 4, 5: 4}
    report = classification_report(logits.numpy(), targets.numpy(), ["a", "b", "c"])
    assert report["top1"] == 50.0 and report["top5"] == 100.0
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]
    assert report["per_class"]["c"]["precision"] == 0.5 and report["per_class"]["b"]["recall"] == 0.0
    paths = write_report(report, ["a", "b", "c"], tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "confusion_matrix.csv").read_text().splitlines()[2] == "b,1,0,1"


def test_auroc_average_precision_and_calibration_by_hand(tmp_path):
    """AUROC and AP one-vs-rest against scikit-learn and hand-worked values; ECE against a hand count; a class
    with no sample here has None and is left out of the macro means; the reliability diagram is written."""
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.45, 0.55, 0.0]])
    targets = np.array([0, 1, 1, 0])
    report = classification_report(probs, targets, ["a", "b", "c"])
    # class a: positives score 0.9, 0.45; negatives 0.6, 0.3 -> 3 of 4 pairs ranked right
    assert report["per_class"]["a"]["auroc"] == 0.75 and report["per_class"]["b"]["auroc"] == 0.75
    assert report["per_class"]["c"]["auroc"] is None and report["per_class"]["c"]["ap"] is None
    assert report["macro_auroc"] == 0.75
    # class a ranked 0.9 (+), 0.6 (-), 0.45 (+), 0.3 (-): AP = (1/1 + 2/3) / 2
    assert report["per_class"]["a"]["ap"] == pytest.approx((1 + 2 / 3) / 2)
    # top-1 confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.55 (wrong), one per 1/15-wide bin
    assert report["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.55) / 4)
    assert sum(b["count"] for b in report["reliability"]) == 4 and len(report["reliability"]) == 15
    assert classification_report(np.eye(3)[[0, 1, 2]], np.arange(3), ["a", "b", "c"])["ece"] == 0.0
    paths = write_report(report, ["a", "b", "c"], tmp_path)
    assert (tmp_path / "reliability_diagram.png") in paths and (tmp_path / "reliability_diagram.png").stat().st_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_scores_rank_by_lowest_class_index_everywhere(dtype):
    # ten equal scores per row (a bf16 tie): torch.topk's first column is not the argmax here, which made the
    # report's top-1 disagree with its own confusion matrix
    scores = torch.zeros(40, 10, dtype=dtype)
    scores[20:, 3:7] = 1.0  # rows 20-39 tie between classes 3-6 only
    assert not torch.equal(scores.topk(5, dim=1).indices[:, 0], scores.argmax(dim=1))  # the old rule disagrees
    assert torch.equal(predicted_labels(scores), scores.argmax(dim=1))
    assert predicted_labels(scores).tolist() == [0] * 20 + [3] * 20
    targets = torch.tensor([0, 4, 5, 9] * 5 + [3, 6, 7, 0] * 5)
    assert topk_correct(scores, targets, ks=(1, 2, 5)) == {1: 10, 2: 10, 5: 25}  # top-5: 0-4, then 3-6 and 0
    report = classification_report(scores.float().numpy(), targets.numpy(), [str(c) for c in range(10)])
    diagonal = int(np.trace(np.asarray(report["confusion_matrix"])))
    assert report["top1"] == 100.0 * diagonal / 40 == 25.0 and report["top5"] == 62.5


def test_results_table_reads_reports_and_summaries(tmp_path, capsys):
    import json
    import shutil

    from utils.results_table import main as results_table

    run = tmp_path / "strategy_loss_focal"
    (run / "eval_test").mkdir(parents=True)
    (run / "eval_test" / "report.json").write_text(json.dumps({"top1": 91.234, "top5": 99.5, "macro_f1": 0.91}))
    (run / "summary.csv").write_text("epoch,val_top1,ema_val_top1,seconds\n0,90.0,90.5,60\n1,91.0,90.9,30\n")
    assert results_table([str(run), "--strip", "strategy_loss_"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row == "| focal | 91.23 | 99.50 | 0.9100 | 91.00 | 2 | 1.5 |"
    nested = tmp_path / "kfold" / "final"  # a run inside another run's folder keeps its path below the common one
    shutil.copytree(run, nested)
    assert results_table([str(run), str(nested)]) == 0
    labels = [line.split(" | ")[0] for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert labels == ["| strategy_loss_focal", "| kfold/final"]
    (run / "train.log").write_text("... INFO parameters: 11,322,769 total, 146,257 trainable (1.29%)\n")
    assert results_table([str(run), "--strip", "strategy_loss_", "--parameters"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("| 1.5 | 146,257 | 45.0 |")
    with pytest.raises(FileNotFoundError, match="--evaluation"):
        results_table([str(tmp_path / "missing")])
