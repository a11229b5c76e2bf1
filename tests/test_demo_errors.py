"""demos/classifier.py on bad input: unreadable images are skipped and listed (stderr, --unreadable FILE) while the
others are classified; every other user error is one `error:` line without a traceback, exit status 2 for usage and 1
for data."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import main as entry
from dataloader.preprocess import ImageDecodeError, decode_image
from helpers import REPO, TIMEOUT, eager_probs


@pytest.fixture(scope="module")
def exports(tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """small_cnn trained for one epoch on the tiny digits, exported with --jit and with --onnx."""
    out = tmp_path_factory.mktemp("demo_errors")
    entry.main(["--data", str(tiny_digits), "--model", "small_cnn", "--epochs", "1", "--warmup", "0", "-b", "8",
                "-j", "0", "--image_size", "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir",
                str(out / "logs"), "--name", "run", "--device", "cpu", "--no-amp", "--no-channels_last"])
    ckpt = out / "ck" / "run" / "last.pth"
    entry.main(["--jit", "--resume", str(ckpt), "--output", str(out / "model.pt")])
    entry.main(["--onnx", "--resume", str(ckpt), "--output", str(out / "model.onnx")])
    return {"checkpoint": ckpt, "torchscript": out / "model.pt", "onnx": out / "model.onnx"}


@pytest.fixture(scope="module")
def classifier() -> ModuleType:
    """demos/classifier.py imported by path, for the errors that need no subprocess."""
    spec = importlib.util.spec_from_file_location("classifier_demo", REPO / "demos" / "classifier.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks the module up
    spec.loader.exec_module(module)
    return module


def demo(*args: object) -> subprocess.CompletedProcess:
    """The demo as a user runs it; unlike helpers.run, a non-zero exit status is the test's to check."""
    return subprocess.run([sys.executable, "demos/classifier.py", *map(str, args)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=TIMEOUT)


def error_lines(stderr: str) -> list[str]:
    """stderr's lines, checked to be `error:` lines only: no traceback, no warnings, no usage block."""
    lines = stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines) and "Traceback" not in stderr, stderr
    return lines


def decode_reason(path: Path) -> str:
    """What the preprocessing module says is wrong with the image at `path`."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    return info.value.reason


@pytest.mark.parametrize("fmt, output", [("torchscript", "text"), ("onnx", "json")])
def test_a_folder_with_unreadable_images_classifies_the_others_and_lists_them(exports, tiny_digits, tmp_path, fmt,
                                                                              output):
    folder = tmp_path / "images"
    good = []
    for source in sorted((tiny_digits / "test").rglob("*.png"))[::8]:  # 5 images of several classes
        good.append(folder / source.parent.name / source.name)
        good[-1].parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, good[-1])
    bad = [folder / good[0].parent.name / "truncated.png", folder / "empty.png", folder / "notes.jpg"]
    bad[0].write_bytes(good[0].read_bytes()[:100])
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image\n")
    list_file = tmp_path / "report" / "unreadable.txt"  # its folder does not exist yet

    json_flag = ["--json"] if output == "json" else []
    proc = demo(exports[fmt], folder, "--topk", "2", "--unreadable", list_file, *json_flag)

    assert proc.returncode == 1, proc.stderr
    if output == "json":
        predictions = {item["image"]: item["predictions"][0] for item in json.loads(proc.stdout)}
    else:
        predictions = {}
        for line in proc.stdout.splitlines():
            image, preds = line.rsplit(": ", 1)
            label, probability = preds.split(", ")[0].split()
            predictions[image] = {"class": label, "probability": float(probability)}
    assert sorted(predictions) == sorted(map(str, good)), proc.stdout
    _, probs, _ = eager_probs(exports["checkpoint"], good)
    for path, p in zip(good, probs):
        assert predictions[str(path)]["class"] == str(int(p.argmax())), path
        assert predictions[str(path)]["probability"] == pytest.approx(float(p.max()), abs=2e-4), path

    listed = [line.split("\t") for line in list_file.read_text().splitlines()]
    assert sorted(listed) == sorted([str(path), decode_reason(path)] for path in bad)
    assert "truncated PNG" in decode_reason(bad[0]) and "empty file" in decode_reason(bad[1])
    assert error_lines(proc.stderr) == [f"error: {path}: {reason}" for path, reason in listed]


def test_a_text_file_given_as_the_image_is_one_error_line(exports, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not pixels\n")
    proc = demo(exports["torchscript"], notes)
    assert proc.returncode == 1 and proc.stdout == ""
    assert error_lines(proc.stderr) == [f"error: {notes}: {decode_reason(notes)}"]


def test_a_missing_model_file_is_a_usage_error(tiny_digits, tmp_path):
    missing = tmp_path / "missing.pt"
    proc = demo(missing, tiny_digits / "test")
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = error_lines(proc.stderr)
    assert f"model file {missing} not found" in line and "python main.py --jit --resume" in line


@pytest.mark.parametrize("kind", ["text file", "training checkpoint"])
def test_a_file_that_is_not_an_exported_model_is_a_data_error(exports, tiny_digits, tmp_path, kind):
    model = exports["checkpoint"]
    if kind == "text file":
        model = tmp_path / "model.onnx"
        model.write_text("not a model\n")
    proc = demo(model, tiny_digits / "test")
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = error_lines(proc.stderr)
    assert str(model) in line and "python main.py --jit --resume" in line


@pytest.mark.parametrize("flags, message", [
    (["--topk", "0"], "argument --topk: must be at least 1, got 0"),
    (["--topk", "two"], "argument --topk: invalid positive_int value: 'two'"),
    (["--threads", "-1"], "argument --threads: must be at least 1, got -1"),
    (["--benchmark", "0"], "argument --benchmark: must be at least 1, got 0"),
    (["--colour"], "unrecognized arguments: --colour"),
    (["--unreadable", "{tmp}"], "--unreadable {tmp} is a folder; give a file path such as {tmp}/unreadable.txt"),
])
def test_bad_flags_are_one_error_line_with_exit_status_2(classifier, exports, tiny_digits, tmp_path, capsys, flags,
                                                         message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    with pytest.raises(SystemExit) as info:
        classifier.main([str(exports["onnx"]), str(tiny_digits / "test"), *flags])
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    [line] = error_lines(captured.err)
    assert line.startswith(f"error: {message.format(tmp=tmp_path)}; see ") and line.endswith(" --help"), line


@pytest.mark.parametrize("images, status", [("missing", 2), ("empty folder", 1)])
def test_an_images_path_without_images_is_one_error_line(classifier, exports, tmp_path, capsys, images, status):
    target = tmp_path / "images"
    if images == "empty folder":
        (target / "sub").mkdir(parents=True)
        (target / "readme.txt").write_text("no images here\n")
    with pytest.raises(SystemExit) as info:
        classifier.main([str(exports["onnx"]), str(target)])
    assert info.value.code == status
    [line] = error_lines(capsys.readouterr().err)
    assert str(target) in line and "give an image file or a folder of images" in line


def test_unreadable_file_is_written_empty_when_every_image_reads(classifier, exports, tiny_digits, tmp_path, capsys):
    list_file = tmp_path / "unreadable.txt"
    list_file.write_text("stale\tfrom an earlier run\n")
    classifier.main([str(exports["onnx"]), str(tiny_digits / "test" / "0"), "--unreadable", str(list_file)])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(list((tiny_digits / "test" / "0").glob("*.png"))) > 0
    assert captured.err == "" and list_file.read_text() == ""


def test_benchmark_on_an_unreadable_image_is_a_data_error(classifier, exports, tmp_path, capsys):
    image = tmp_path / "empty.png"
    image.write_bytes(b"")
    list_file = tmp_path / "unreadable.txt"
    with pytest.raises(SystemExit) as info:
        classifier.main([str(exports["torchscript"]), str(image), "--benchmark", "3", "--unreadable", str(list_file)])
    captured = capsys.readouterr()
    assert info.value.code == 1 and captured.out == ""
    assert error_lines(captured.err) == [f"error: {image}: empty file (0 bytes)"]
    assert list_file.read_text() == f"{image}\tempty file (0 bytes)\n"


def test_without_arguments_the_newest_export_classifies_the_sample_images(classifier, exports, tmp_path,
                                                                          monkeypatch, capsys):
    """`cd demos; python classifier.py` (the main seed's usage): the newest export under checkpoints/ classifies the
    committed sample images in demos/images; with no export, one line saying how to make one."""
    root = tmp_path / "repo"
    (root / "checkpoints" / "old").mkdir(parents=True)
    (root / "checkpoints" / "new").mkdir()
    shutil.copy(exports["onnx"], root / "checkpoints" / "old" / "best.onnx")
    shutil.copy(exports["torchscript"], root / "checkpoints" / "new" / "best.torchscript.pt")
    os.utime(root / "checkpoints" / "old" / "best.onnx", (1, 1))  # older
    monkeypatch.setattr(classifier, "REPO", root)
    monkeypatch.chdir(REPO / "demos")
    classifier.main([])
    captured = capsys.readouterr()
    assert f"using the newest export under {root / 'checkpoints'}: " in captured.err
    assert str(root / "checkpoints" / "new" / "best.torchscript.pt") in captured.err
    samples = sorted((REPO / "demos" / "images").glob("*.png"))
    assert len(samples) >= 5 and [line.split(": ")[0] for line in captured.out.splitlines()] == list(map(str, samples))
    _, expected, _ = eager_probs(exports["checkpoint"], samples)
    assert [line.split(": ")[1].split(" ")[0] for line in captured.out.splitlines()] == [
        str(int(p.argmax())) for p in expected]  # the export's top-1 on each sample is the trained network's
    shutil.rmtree(root / "checkpoints")
    with pytest.raises(SystemExit) as stop:
        classifier.main([])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: no MODEL given and no exported model")
    assert "python main.py --jit" in err[0]
