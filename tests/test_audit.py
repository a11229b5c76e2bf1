"""--audit: a corrupted copy of sklearn digits (5% of the train labels moved to a wrong class folder, 50 train files
copied into test, a losslessly re-encoded copy and a JPEG copy of val images in train) is audited with its own
5 folds; the audit must find the flips, every copy, the re-encoded and the JPEG copy, write a cleaned root that
trains, give the same files under torchrun with 2 processes, and show it all in the page (headless Chromium)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import main as entry
from benchmarks.audit_recall import corrupt
import dataloader.image_audit as image_audit
from dataloader.image_audit import hamming_pairs
from engine.audit_report import read_csv_rows
from helpers import REPO, torchrun
from test_serve_page import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401  (the headless browser fixture)
from utils.checkpoint import load_checkpoint

FOLDS = 5
# The folds' recipe: 16 px is enough for 8x8 digits; 5 epochs reach ~99% on the images whose labels were not flipped.
RECIPE = ["--kfold", str(FOLDS), "--epochs", "5", "--warmup", "0", "--image_size", "16", "16", "--lr", "0.003",
          "--lr_schedule", "cosine", "-b", "32", "-j", "0", "--device", "cpu", "--no-amp", "--no-channels_last"]


def reencode_into(source: Path, target: Path, *flags: int) -> None:
    """Write the decoded image of ``source`` to ``target`` (the suffix chooses the format)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(target), cv2.imread(str(source), cv2.IMREAD_UNCHANGED), list(flags))


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[Path, dict]:
    """Full digits (1,257 train / 270 val / 270 test), corrupted; plus two val images copied into train: one PNG
    re-encoded (other bytes, same pixels) and one JPEG (other pixels: a near duplicate)."""
    base = tmp_path_factory.mktemp("audit")
    subprocess.run([sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(base / "digits")], cwd=REPO,
                   check=True, timeout=120, capture_output=True)
    data = base / "corrupted"
    counts = corrupt(str(base / "digits"), str(data), 0.05, 50, seed=0)
    val = sorted((data / "val" / "3").glob("*.png"))
    extra = {"reencoded": ("val/3/" + val[0].name, "train/3/reencoded.png"),
             "jpeg": ("val/3/" + val[1].name, "train/3/jpeg.jpg")}
    reencode_into(val[0], data / extra["reencoded"][1], cv2.IMWRITE_PNG_COMPRESSION, 0)
    reencode_into(val[1], data / extra["jpeg"][1], cv2.IMWRITE_JPEG_QUALITY, 90)
    return data, {**counts, **extra}


@pytest.fixture(scope="module")
def audited(corrupted, tmp_path_factory) -> Path:
    """The audit of the corrupted copy with 5 folds trained in-process (about 30 s on one core)."""
    data, _ = corrupted
    ck = tmp_path_factory.mktemp("audit_runs")
    entry.run_command(["--audit", "--data", str(data), *RECIPE, "--checkpoint_dir", str(ck), "--log_dir",
                       str(ck / "logs"), "--name", "aud", "--audit_fix", "--audit_phash_threshold", "6",
                       "--audit_pixel_tolerance", "5", "--audit_top", "80"])
    return ck / "aud" / "audit"


def test_the_audit_finds_the_flipped_labels_and_every_copy(corrupted, audited):
    data, made = corrupted
    truth = read_csv_rows(data / "corruption.csv")
    flips = {row["path"] for row in truth if row["kind"] == "flip"}
    issues = read_csv_rows(audited / "label_issues.csv")
    # k = the number of flips: the audit is asked for exactly as many suspects as there are errors
    top = {row["path"] for row in issues[:len(flips)]}
    assert len(flips) == made["flips"] == 63
    assert len(flips & top) >= 0.9 * len(flips), (len(flips & top), len(flips))
    flagged = [row for row in issues if row["flagged"] == "1"]
    assert len(flagged) >= 0.8 * len(flips)  # confident learning alone, before the disagreeing rest
    first = issues[0]
    assert first["path"] in flips and float(first["self_confidence"]) < 0.05
    assert first["suggested_label"] == next(r["original_label"] for r in truth if r["path"] == first["path"])

    group_of = {row["path"]: row["group"] for row in read_csv_rows(audited / "exact_duplicates.csv")}
    copies = [(row["path"], row["source"]) for row in truth if row["kind"] == "copy"]
    assert len(copies) == 50 and all(group_of.get(c) is not None and group_of[c] == group_of.get(s)
                                     for c, s in copies)
    rows = {row["path"]: row for row in read_csv_rows(audited / "exact_duplicates.csv")}
    source, copy = made["reencoded"]
    assert group_of[source] == group_of[copy] and rows[source]["same_bytes"] == "0"  # compared with the train copy
    source, copy = made["jpeg"]
    near = {(row["path_a"], row["path_b"]): row for row in read_csv_rows(audited / "near_duplicates.csv")}
    assert (copy, source) in near and near[(copy, source)]["scope"] == "train-val"
    assert copy not in group_of  # lossy: not an exact copy


def test_statistics_and_summary(corrupted, audited):
    import json

    summary = json.loads((audited / "summary.json").read_text())
    assert summary["images"] == {"train": 1259, "val": 270, "test": 320}
    assert summary["exact_duplicate_pairs"]["train-test"] == 50
    assert summary["exact_duplicate_pairs"]["train-val"] >= 1 and summary["near_duplicate_pairs"]["train-val"] >= 1
    balance = read_csv_rows(audited / "class_balance.csv")
    assert sum(int(r["count"]) for r in balance if r["split"] == "test") == 320
    sizes = read_csv_rows(audited / "image_sizes.csv")
    assert {(r["width"], r["height"], r["mode"]) for r in sizes} == {("32", "32", "grey")}


def test_the_cleaned_root_leaves_the_data_alone_and_trains(corrupted, audited, tmp_path):
    data, made = corrupted
    files_before = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    cleaned = audited / "cleaned"
    held = {row["path"]: row for row in read_csv_rows(cleaned / "held_out.csv")}
    truth = read_csv_rows(data / "corruption.csv")
    for row in truth:
        if row["kind"] == "copy":  # the train original goes, the test copy stays
            assert held[row["source"]]["reason"] == "duplicate across splits"
    assert held[made["reencoded"][1]]["reason"] == "duplicate across splits"
    assert held[made["jpeg"][1]]["reason"] == "near duplicate across splits"
    flips_held = sum(held.get(row["path"], {}).get("reason") == "label issue" for row in truth if row["kind"] == "flip")
    assert flips_held >= 0.8 * 63
    train = read_csv_rows(cleaned / "train.csv")
    kept = {str((cleaned / row["filename"]).resolve().relative_to(data.resolve())) for row in train}
    assert not kept & set(held) and len(train) == 1259 - sum(r["split"] == "train" for r in held.values())
    entry.run_command(["--data", str(cleaned), "--epochs", "1", "--warmup", "0", "-b", "32", "-j", "0", "--device",
                       "cpu", "--image_size", "16", "16", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
                       str(tmp_path / "logs"), "--name", "clean"])
    assert load_checkpoint(tmp_path / "ck" / "clean" / "last.pth").metrics["val_top1"] > 0
    assert sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file()) == files_before


def test_two_processes_write_the_same_files_as_one(audited, tmp_path):
    folds = [str(audited.parent / f"fold{i}" / "best.pth") for i in range(FOLDS)]
    out = tmp_path / "audit2"
    torchrun(2, ["--audit", "--resume", *folds, "--output", str(out), "-b", "32", "-j", "0", "--device", "cpu",
                 "--no-amp", "--audit_phash_threshold", "6", "--audit_pixel_tolerance", "5"])
    for name in ("class_balance.csv", "image_sizes.csv", "unreadable.csv", "exact_duplicates.csv",
                 "near_duplicates.csv"):
        assert (out / name).read_text() == (audited / name).read_text(), name
    one, two = read_csv_rows(audited / "label_issues.csv"), read_csv_rows(out / "label_issues.csv")
    assert len(one) > 60 and [r["path"] for r in one] == [r["path"] for r in two]
    for a, b in zip(one, two):  # batches split between ranks may round the last digit differently
        assert abs(float(a["self_confidence"]) - float(b["self_confidence"])) <= 2e-4
        assert (a["given_label"], a["suggested_label"], a["flagged"]) == (b["given_label"], b["suggested_label"],
                                                                           b["flagged"])


def test_hamming_pairs_equal_a_double_loop_in_any_shard(monkeypatch):
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=700, dtype=np.uint64)
    hashes[300] = hashes[5] ^ np.uint64(0b101)
    expected = [(a, b) for a in range(700) for b in range(a + 1, 700)
                if bin(int(hashes[a]) ^ int(hashes[b])).count("1") <= 22]
    i, j, d = hamming_pairs(hashes, 22)
    assert (5, 300) in expected and sorted(zip(i.tolist(), j.tolist())) == expected
    monkeypatch.setattr(image_audit, "BLOCK_ELEMENTS", 700 * 16)  # 16-row blocks, so that every shard gets some
    shards = [hamming_pairs(hashes, 22, (rank, 3)) for rank in range(3)]
    assert all(len(s[0]) for s in shards)
    assert sorted(p for s in shards for p in zip(s[0].tolist(), s[1].tolist())) == expected


def error_of(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        entry.main(argv)
    return stop.value.code, capsys.readouterr().err.strip()


def test_mistakes_are_one_error_line(tiny_digits, audited, tmp_path, capsys):
    code, error = error_of(["--audit", "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and error.startswith("error: --data ") and "no such folder" in error
    empty = tmp_path / "empty_val"
    shutil.copytree(tiny_digits / "train", empty / "train")
    (empty / "val").mkdir()
    code, error = error_of(["--audit", "--data", str(empty), "--audit_skip_labels"], capsys)
    assert code == 1 and "the val split" in error and "holds no images" in error
    folds = [str(audited.parent / f"fold{i}" / "best.pth") for i in range(FOLDS - 1)]
    code, error = error_of(["--audit", "--resume", *folds], capsys)
    assert code == 2 and f"folds [0, 1, 2, 3] of a --kfold {FOLDS} training" in error
    entry.run_command(["--data", str(tiny_digits), "--epochs", "1", "--warmup", "0", "-b", "8", "-j", "0", "--device",
                       "cpu", "--image_size", "16", "16", "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
                       str(tmp_path / "logs"), "--name", "plain"])
    plain = str(tmp_path / "ck" / "plain" / "best.pth")
    code, error = error_of(["--audit", "--resume", plain, "--device", "cpu"], capsys)
    assert code == 2 and f"--resume {plain} is not a fold of a --kfold training" in error
    code, error = error_of(["--audit", "--resume", plain, "--audit_skip_labels"], capsys)
    assert code == 2 and "--audit_skip_labels uses no model" in error
    code, error = error_of(["--audit_fix", "--data", str(tiny_digits)], capsys)
    assert code == 2 and "--audit_fix belongs to --audit" in error


def test_unreadable_files_are_listed_and_stop_only_the_label_part(tiny_digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_digits, data)
    broken = sorted((data / "train" / "4").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated PNG
    summary = entry.run_command(["--audit", "--data", str(data), "--output", str(tmp_path / "out"), "--device", "cpu",
                                 "-j", "0"])
    assert summary["unreadable"] == 1 and summary["label_issues"] is None
    assert "unreadable train images" in summary["label_source"]
    rows = read_csv_rows(tmp_path / "out" / "unreadable.csv")
    assert [(r["split"], r["path"]) for r in rows] == [("train", str(broken.relative_to(data)))]
    assert "truncated PNG" in rows[0]["reason"]


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no system chromium + chromedriver (Debian: apt-get "
                                                              "install chromium chromium-driver)")
def test_the_page_shows_summary_pairs_and_label_issues(audited, browser):
    from selenium.webdriver.common.by import By

    browser.get((audited / "index.html").resolve().as_uri())
    assert browser.title.startswith("Dataset audit")
    summary = browser.find_element(By.ID, "summary").text
    assert "exact duplicate pairs:" in summary and "train-test 50" in summary
    assert "likely label errors:" in summary and "flagged by confident learning" in summary
    leaks = browser.find_elements(By.CSS_SELECTOR, "#leakage .pair")
    assert len(leaks) >= 52 and all(p.get_attribute("data-scope") in ("train-test", "train-val") for p in leaks)
    issues = browser.find_elements(By.CSS_SELECTOR, "#label-issues .issue")
    assert len(issues) == min(80, len(read_csv_rows(audited / "label_issues.csv"))) > 60  # --audit_top 80
    images = browser.find_elements(By.CSS_SELECTOR, "#leakage .pair img") + \
        browser.find_elements(By.CSS_SELECTOR, "#label-issues .issue img")
    widths = browser.execute_script("return arguments[0].map(i => i.naturalWidth)", images)
    assert len(widths) == 2 * len(leaks) + len(issues) and min(widths) == 32  # decoded inline PNGs, no files
    assert "given" in issues[0].text and "suggested" in issues[0].text
