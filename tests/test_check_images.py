"""dataloader/check_images.py: finds zero-byte, truncated and non-image files, exit codes, --move quarantine."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dataloader.check_images import find_bad_images, main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encoded(suffix: str) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    return cv2.imencode(suffix, image)[1].tobytes()


@pytest.fixture
def good_root(tmp_path):
    root = tmp_path / "data"
    for rel, suffix in [("train/cat/a.png", ".png"), ("train/dog/b.jpg", ".jpg"), ("val/cat/c.JPEG", ".jpg")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encoded(suffix))
    (root / "train.csv").write_text("filename,label\n")  # not an image: skipped, not reported
    return root


@pytest.fixture
def bad_root(good_root):
    png, jpg = encoded(".png"), encoded(".jpg")
    (good_root / "train/cat/empty.png").write_bytes(b"")
    (good_root / "train/cat/cut.png").write_bytes(png[: len(png) // 2])
    (good_root / "train/dog/cut.jpg").write_bytes(jpg[: len(jpg) - 300])
    (good_root / "val/cat/text.png").write_text("hello, not a picture")
    return good_root


BAD = {
    os.path.join("train", "cat", "cut.png"): "truncated PNG",
    os.path.join("train", "cat", "empty.png"): "empty file",
    os.path.join("train", "dog", "cut.jpg"): "truncated JPEG",
    os.path.join("val", "cat", "text.png"): "cannot decode",
}


def test_clean_tree_exits_zero(good_root, capsys):
    assert main([str(good_root)]) == 0
    out = capsys.readouterr().out
    assert "checked 3 images" in out and "0 bad" in out and "1 files without an image extension" in out


def test_bad_files_are_listed_with_reasons(bad_root, capsys):
    bad, checked, others = find_bad_images(str(bad_root), workers=2)
    assert checked == 7 and others == 1
    assert [rel for rel, _ in bad] == sorted(BAD)
    for rel, reason in bad:
        assert BAD[rel] in reason
    assert main([str(bad_root)]) == 1
    out = capsys.readouterr().out
    for rel in BAD:
        assert f"BAD {rel}:" in out


def test_move_quarantines_preserving_relative_paths(bad_root, tmp_path):
    quarantine = tmp_path / "quarantine"
    assert main([str(bad_root), "--move", str(quarantine)]) == 1
    for rel in BAD:
        assert (quarantine / rel).is_file() and not (bad_root / rel).exists()
    assert (bad_root / "train/cat/a.png").is_file()
    assert main([str(bad_root)]) == 0  # clean now


def test_runs_as_a_script_from_repo_root(bad_root):
    cmd = [sys.executable, "dataloader/check_images.py", str(bad_root)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "4 bad" in result.stdout
