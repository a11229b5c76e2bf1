"""--predict: the submission CSV (order, labels, probabilities) with 1 and 2 processes, CSV inputs, ensembles of
checkpoints and exported models, TTA, and the errors a user meets."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

import main as entry
from helpers import run, torchrun


def train(data: Path, out: Path, name: str, seed: int) -> Path:
    entry.run_command(["--data", str(data), "--epochs", "1", "--warmup", "0", "-b", "8", "-j", "0", "--image_size", "32",
                "32", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name,
                "--device", "cpu", "--seed", str(seed), "--no-amp", "--no-channels_last"])
    return out / "ck" / name / "last.pth"


@pytest.fixture(scope="module")
def checkpoints(tiny_digits, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("predict_runs")
    return train(tiny_digits, out, "a", seed=0), train(tiny_digits, out, "b", seed=1)


def read_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path, newline="")))


def probs_of(rows: list[dict], classes: list[str]) -> torch.Tensor:
    return torch.tensor([[float(r[c]) for c in classes] for r in rows], dtype=torch.float64)


def test_submission_lists_every_image_in_order_and_is_the_same_with_two_processes(checkpoints, tiny_digits,
                                                                                   tmp_path):
    images = tiny_digits / "test"
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    entry.run_command(["--predict", str(images), "--resume", str(checkpoints[0]), "--output", str(one), "-j", "0",
                "--probabilities"])
    torchrun(2, ["--predict", str(images), "--resume", str(checkpoints[0]), "--output", str(two), "-j", "0",
                 "--probabilities"])
    expected = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    rows = read_rows(one)
    assert [r["filename"] for r in rows] == expected
    classes = [str(i) for i in range(10)]
    assert list(rows[0]) == ["filename", "label"] + classes
    probs = probs_of(rows, classes)
    assert torch.allclose(probs.sum(1), torch.ones(len(rows), dtype=torch.float64), atol=1e-5)
    assert [r["label"] for r in rows] == [classes[i] for i in probs.argmax(1).tolist()]
    rows_two = read_rows(two)
    assert [r["filename"] for r in rows_two] == expected
    assert torch.allclose(probs_of(rows_two, classes), probs, atol=2e-6)  # 6 decimals in the file


def test_csv_input_keeps_its_order_and_names(checkpoints, tiny_digits, tmp_path):
    files = sorted((tiny_digits / "test").rglob("*.png"))[::-1][:7]
    listing = tmp_path / "list" / "images.csv"
    listing.parent.mkdir()
    with open(listing, "w", newline="") as handle:
        handle.write("id,filename\n")
        handle.writelines(f"{i},{p}\n" for i, p in enumerate(files))  # absolute paths
    out = tmp_path / "sub.csv"
    entry.run_command(["--predict", str(listing), "--resume", str(checkpoints[0]), "--output", str(out), "-j", "0"])
    rows = read_rows(out)
    assert [r["filename"] for r in rows] == [str(p) for p in files]
    assert list(rows[0]) == ["filename", "label"]


def test_weighted_ensemble_and_tta_equal_the_hand_average(checkpoints, tiny_digits, tmp_path):
    images, classes = tiny_digits / "val", [str(i) for i in range(10)]
    single = []
    for i, ckpt in enumerate(checkpoints):
        out = tmp_path / f"m{i}.csv"
        entry.run_command(["--predict", str(images), "--resume", str(ckpt), "--output", str(out), "-j", "0",
                    "--probabilities", "--tta", "flip"])
        single.append(probs_of(read_rows(out), classes))
    both = tmp_path / "both.csv"
    entry.run_command(["--predict", str(images), "--resume", *map(str, checkpoints), "--ensemble_weights", "3", "1",
                "--output", str(both), "-j", "0", "--probabilities", "--tta", "flip"])
    expected = 0.75 * single[0] + 0.25 * single[1]
    assert torch.allclose(probs_of(read_rows(both), classes), expected, atol=2e-6)


def test_torchscript_export_is_an_ensemble_member_like_its_checkpoint(checkpoints, tiny_digits, tmp_path):
    exported = tmp_path / "a.pt"
    run([sys.executable, "main.py", "--jit", "--resume", str(checkpoints[0]), "--output", str(exported)])
    images, classes = tiny_digits / "val", [str(i) for i in range(10)]
    rows = {}
    for name, model in (("ckpt", checkpoints[0]), ("jit", exported)):
        entry.run_command(["--predict", str(images), "--resume", str(model), "--output", str(tmp_path / f"{name}.csv"),
                    "-j", "0", "--probabilities"])
        rows[name] = read_rows(tmp_path / f"{name}.csv")
    assert [r["label"] for r in rows["ckpt"]] == [r["label"] for r in rows["jit"]]
    assert torch.allclose(probs_of(rows["ckpt"], classes), probs_of(rows["jit"], classes), atol=1e-4)


@pytest.mark.parametrize("case,message", [
    ("weights", "--ensemble_weights has 1 values for 2 --resume models"),
    ("missing", "listed files do not exist"),
    ("empty_dir", "no image files"),
    ("two_for_export", "only --predict and --evaluation take several"),
])
def test_clear_errors(checkpoints, tmp_path, case, message):
    a, b = map(str, checkpoints)
    listing = tmp_path / "l.csv"
    listing.write_text("filename\nnope.png\n")
    (tmp_path / "empty").mkdir()
    argv = {"weights": ["--predict", str(tmp_path), "--resume", a, b, "--ensemble_weights", "1"],
            "missing": ["--predict", str(listing), "--resume", a],
            "empty_dir": ["--predict", str(tmp_path / "empty"), "--resume", a],
            "two_for_export": ["--jit", "--resume", a, b]}[case]
    with pytest.raises((ValueError, FileNotFoundError, SystemExit), match=message):
        entry.run_command(argv + ["-j", "0"])


def test_members_with_different_classes_are_refused(checkpoints, tiny_digits, tmp_path):
    ckpt = torch.load(checkpoints[1], weights_only=True)
    ckpt["class_names"] = list(reversed(ckpt["class_names"]))
    other = tmp_path / "other.pth"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="ensemble members must share classes"):
        entry.run_command(["--predict", str(tiny_digits / "val"), "--resume", str(checkpoints[0]), str(other), "-j", "0",
                    "--output", str(tmp_path / "x.csv")])


def test_evaluation_of_an_ensemble_equals_the_averaged_submission(checkpoints, tiny_digits, tmp_path):
    """--evaluation with several --resume models (a checkpoint and another run's TorchScript export): the report is
    that of the weighted average of the members' probabilities, each member's own top-1 is its evaluation's, and
    two processes give the same report."""
    exported = tmp_path / "b.pt"
    run([sys.executable, "main.py", "--jit", "--resume", str(checkpoints[1]), "--output", str(exported)])
    both = tmp_path / "both.csv"
    entry.run_command(["--predict", str(tiny_digits / "val"), "--resume", str(checkpoints[0]), str(exported),
                       "--ensemble_weights", "3", "1", "--output", str(both), "-j", "0", "--probabilities"])
    rows = read_rows(both)
    truth = torch.tensor([int(Path(r["filename"]).parent.name) for r in rows])
    expected_top1 = 100.0 * float((probs_of(rows, [str(i) for i in range(10)]).argmax(1) == truth).double().mean())
    flags = ["--evaluation", "--resume", str(checkpoints[0]), str(exported), "--ensemble_weights", "3", "1", "--split",
             "val", "-j", "0"]
    report = entry.run_command(flags + ["--output", str(tmp_path / "eval")])
    assert report["samples"] == len(rows) and report["top1"] == pytest.approx(expected_top1, abs=1e-9)
    assert [m["weight"] for m in report["members"]] == [0.75, 0.25]
    alone = entry.run_command(["--evaluation", "--resume", str(checkpoints[0]), "--split", "val", "-j", "0",
                               "--output", str(tmp_path / "alone")])
    assert report["members"][0]["top1"] == pytest.approx(alone["top1"], abs=1e-9)
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["checkpoint"] == [str(checkpoints[0]),
                                                                                       str(exported)]
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "main.py", *flags,
         "--output", str(tmp_path / "eval2"), "--device", "cpu"])
    two = json.loads((tmp_path / "eval2" / "report.json").read_text())
    assert two["world_size"] == 2 and two["confusion_matrix"] == report["confusion_matrix"]
    with pytest.raises(ValueError, match="give --data DIR"):
        entry.run_command(["--evaluation", "--resume", str(exported), str(exported), "-j", "0"])
