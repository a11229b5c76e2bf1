"""dataloader.gpu_decode (`--decode device`), run on CPU: the same code decodes with nvjpeg when the device is CUDA.

Real photographs (scikit-learn's two sample JPEGs) cut to varied aspect ratios and re-encoded with OpenCV, grey,
progressive and 4:4:4 among them; every decoded batch is compared with the loader path's (OpenCV) output.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import sklearn.datasets
import torch

import main as entry
from benchmarks.common import parse_markdown_table
from dataloader.augment import random_affine
from dataloader.datasets import ImageClassificationDataset, build_datasets, build_loader
from dataloader.gpu_decode import EncodedImageDataset, basic_affine_matrix, encode_splits, is_device_jpeg
from dataloader.preprocess import ImageDecodeError, decode_image, letterbox_geometry, letterbox_resize
from helpers import REPO, run, torchrun
from utils.checkpoint import load_checkpoint

PHOTOS = Path(sklearn.datasets.__file__).parent / "images"  # china.jpg, flower.jpg: 427 x 640 colour photographs
SEED = 5


def photo(name: str) -> np.ndarray:
    return cv2.imread(str(PHOTOS / name))  # BGR


def write(path: Path, image: np.ndarray, *flags: int) -> str:
    ok, buf = cv2.imencode(path.suffix, image, list(flags))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    buf.tofile(str(path))
    return str(path)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[str]:
    """Six JPEGs: wide, tall, very wide grey, tiny (enlarged by the letterbox), progressive, 4:4:4."""
    out = tmp_path_factory.mktemp("jpegs")
    china, flower = photo("china.jpg"), photo("flower.jpg")
    return [
        write(out / "china_full.jpg", china, cv2.IMWRITE_JPEG_QUALITY, 90),
        write(out / "flower_tall.jpg", flower[:400, 250:400], cv2.IMWRITE_JPEG_QUALITY, 75),
        write(out / "china_grey_wide.jpg", cv2.cvtColor(china[100:170], cv2.COLOR_BGR2GRAY)),
        write(out / "flower_tiny.jpg", flower[200:230, 300:320]),
        write(out / "china_progressive.jpg", china[:300, 200:500], cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        write(out / "flower_444.jpg", flower[:, 100:600], cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    ]


def base_dataset(paths: list[str], size, aug=None) -> ImageClassificationDataset:
    return ImageClassificationDataset([(p, 0) for p in paths], ["x"], image_size=size, aug=aug, seed=SEED)


def loader_path(paths: list[str], size, aug=None, epoch=0) -> torch.Tensor:
    """Today's path: OpenCV decode + letterbox (+ augmentation) per item, as the loader workers run it."""
    dataset = base_dataset(paths, size, aug)
    return torch.stack([dataset[(i, epoch)][0] for i in range(len(paths))])


def device_path(paths: list[str], size, aug=None, epoch=0):
    """`--decode device`: worker items collated into one EncodedBatch, decoded here on the CPU."""
    dataset = EncodedImageDataset(base_dataset(paths, size, aug))
    batch, labels, indices = dataset.collate_fn([dataset[(i, epoch)] for i in range(len(paths))])
    assert indices.tolist() == list(range(len(paths))) and labels.dtype == torch.int64
    return batch, batch.decode("cpu")


# ---------------------------------------------------------------------------------------------------------------
# decode + letterbox against the loader path


@pytest.mark.parametrize("size", [(64, 96), (224, 224), (32, 32), (200, 123), (700, 700)])
def test_letterbox_geometry_and_values_match_loader_path(jpegs, size):
    batch, got = device_path(jpegs, size)
    ref = loader_path(jpegs, size)
    assert batch.jpeg_slots == list(range(len(jpegs))) and not batch.decoded_slots  # all decoded by decode_jpeg
    assert got.shape == ref.shape == (len(jpegs), 3, *size) and got.dtype == torch.uint8
    for i, path in enumerate(jpegs):
        h, w = decode_image(path).shape[:2]
        top, left, new_h, new_w, _ = letterbox_geometry(h, w, size)
        content = torch.zeros(size, dtype=torch.bool)
        content[top:top + new_h, left:left + new_w] = True
        assert (got[i][:, ~content] == 0).all() and (ref[i][:, ~content] == 0).all(), path  # same pad borders
        assert got[i][:, content].float().mean() > 20, path  # a photograph, not padding
        diff = (got[i].int() - ref[i].int()).abs()
        worst, mean = diff.max().item(), diff.float().mean().item()
        # Decoding is identical (libjpeg-turbo on both paths); resizing differs by rounding only (OpenCV resizes
        # in fixed point: its 11-bit bilinear weights show most when enlarging, as for the 30 x 20 image).
        assert worst <= 1 and mean < 0.15, (path, worst, mean)


def test_autocast_does_not_change_the_pixels(jpegs):
    batch, plain = device_path(jpegs, (64, 96), aug="basic")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation builds its inputs inside autocast
        assert torch.equal(batch.decode("cpu"), plain)


def test_grey_jpeg_gives_three_equal_channels(jpegs):
    _, got = device_path([jpegs[2]], (64, 96))
    assert torch.equal(got[0, 0], got[0, 1]) and torch.equal(got[0, 0], got[0, 2])


def test_image_kinds_are_routed(jpegs, tmp_path):
    from PIL import Image

    for path in jpegs:
        assert is_device_jpeg(np.fromfile(path, np.uint8)), path
    cmyk = io.BytesIO()
    Image.fromarray(photo("china.jpg")[:64, :64, ::-1].copy()).convert("CMYK").save(cmyk, "JPEG")
    png = np.fromfile(write(tmp_path / "a.png", photo("china.jpg")[:20, :30]), np.uint8)
    garbage = np.frombuffer(b"\xff\xd8 not a jpeg \xff\xd9", np.uint8)
    for data in (np.frombuffer(cmyk.getvalue(), np.uint8), png, garbage):
        assert not is_device_jpeg(data)


def test_other_formats_decode_in_the_worker_exactly_as_the_loader_path(jpegs, tmp_path):
    from PIL import Image

    bgra = np.dstack([photo("flower.jpg")[:90, :120], np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (90, 1))])
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(photo("china.jpg")[:80, :50, ::-1].copy()).convert("CMYK").save(cmyk, "JPEG")
    paths = [write(tmp_path / "alpha.png", bgra), jpegs[0], str(cmyk),
             write(tmp_path / "deep.png", (photo("china.jpg")[:40, :60].astype(np.uint16) * 257)),
             write(tmp_path / "plain.bmp", photo("flower.jpg")[:50, :50])]
    batch, got = device_path(paths, (48, 64))
    assert batch.decoded_slots == [0, 2, 3, 4] and batch.jpeg_slots == [1]
    ref = loader_path(paths, (48, 64))
    for i in batch.decoded_slots:  # alpha composited on black, CMYK, 16-bit: the loader path's own pixels
        assert torch.equal(got[i], ref[i]), paths[i]
    assert (got[1].int() - ref[1].int()).abs().max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# --aug basic


def test_basic_affine_matrix_draws_as_random_affine():
    image = letterbox_resize(decode_image(PHOTOS / "china.jpg"), (64, 96))
    flips = []
    for epoch in range(8):
        expected = random_affine(image, np.random.default_rng([SEED, epoch, 3]))
        matrix = basic_affine_matrix((64, 96), np.random.default_rng([SEED, epoch, 3]))
        got = cv2.warpAffine(image, matrix, (96, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0, 0, 0))
        flips.append(np.random.default_rng([SEED, epoch, 3]).random() < 0.5)
        diff = np.abs(got.astype(int) - expected)
        if flips[-1]:  # the flip folded into the matrix moves OpenCV's 1/32-pixel grid at a few sharp edges
            assert diff.mean() < 0.05, epoch
        else:
            assert diff.max() == 0, epoch
    assert any(flips) and not all(flips)


def test_basic_aug_on_the_device_matches_loader_path_and_is_deterministic(jpegs):
    flipped = set()
    for epoch in range(3):
        _, got = device_path(jpegs, (64, 96), aug="basic", epoch=epoch)
        ref = loader_path(jpegs, (64, 96), aug=True, epoch=epoch)
        plain = loader_path(jpegs, (64, 96))
        for i in range(len(jpegs)):
            # a different flip or affine would differ by tens of levels; interpolation rounding by a fraction
            assert (got[i].int() - ref[i].int()).abs().float().mean() < 0.5, (epoch, i)
            assert (got[i].int() - plain[i].int()).abs().float().mean() > 2, (epoch, i)  # it is augmented
            flipped.add(bool(np.random.default_rng([SEED, epoch, i]).random() < 0.5))
        assert torch.equal(device_path(jpegs, (64, 96), aug="basic", epoch=epoch)[1], got)  # (seed, epoch, index)
    assert flipped == {True, False}
    assert not torch.equal(device_path(jpegs, (64, 96), aug="basic", epoch=0)[1], got)  # another epoch


def test_loader_batches_do_not_depend_on_workers(jpegs):
    dataset = EncodedImageDataset(base_dataset(jpegs * 2, (32, 48), aug="basic"))
    epochs = []
    for workers in (0, 2):
        loader = build_loader(dataset, batch_size=4, workers=workers, train=True, seed=SEED)
        loader.sampler.set_epoch(1)
        epochs.append([(images.decode("cpu"), labels, indices) for images, labels, indices in loader])
    assert len(epochs[0]) == len(epochs[1]) == 3
    for (a, la, ia), (b, lb, ib) in zip(*epochs):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(a, b)


def test_unsupported_options_are_refused(jpegs, tmp_path):
    for aug in ("randaugment", "basic,erasing"):
        with pytest.raises(ValueError, match=r"--decode device supports only --aug basic.*--decode loader"):
            EncodedImageDataset(base_dataset(jpegs, 32, aug))
    for name, path in (("a", jpegs[0]), ("b", jpegs[1])):
        (tmp_path / "train" / name).mkdir(parents=True)
        os.symlink(path, tmp_path / "train" / name / "0.jpg")
    splits = build_datasets(tmp_path, image_size=32, aug=None, val_ratio=0.0, seed=0)
    with pytest.raises(ValueError, match="--cache_images ram .*--decode device"):
        encode_splits(splits, cache_images="ram")


# ---------------------------------------------------------------------------------------------------------------
# undecodable files


def _bogus_jpeg(path: Path) -> str:
    """Intact markers and end, a frame header with impossible sampling factors: only the decoder can tell."""
    data = bytearray(cv2.imencode(".jpg", photo("china.jpg")[:32, :48])[1].tobytes())
    frame = data.find(b"\xff\xc0")
    data[frame + 11] = 0  # first component's sampling factors
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("kind", ["bogus_jpeg", "truncated_jpeg", "empty", "text_as_jpg"])
def test_undecodable_file_raises_decode_error_naming_it(jpegs, tmp_path, kind):
    bad = tmp_path / f"{kind}.jpg"
    if kind == "bogus_jpeg":
        _bogus_jpeg(bad)
    elif kind == "truncated_jpeg":
        data = Path(jpegs[0]).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_text("not an image\n")
    dataset = EncodedImageDataset(base_dataset([jpegs[0], str(bad), jpegs[1]], (32, 32)))
    with pytest.raises(ImageDecodeError) as excinfo:
        if kind == "bogus_jpeg":  # passes the worker; the batched decode fails and is retried image by image
            batch, _, _ = dataset.collate_fn([dataset[i] for i in range(3)])
            batch.decode("cpu")
        else:  # refused by the worker, with the loader path's checks
            dataset[1]
    assert str(bad) in str(excinfo.value) and "dataloader/check_images.py" in str(excinfo.value)
    assert excinfo.value.path == str(bad)


# ---------------------------------------------------------------------------------------------------------------
# through main.py


def photo_classes(root: Path) -> None:
    """Two classes of real photographs, random crops of varied size and aspect; one grey JPEG and one PNG in train."""
    rng = np.random.default_rng(0)
    for name in ("china", "flower"):
        source = photo(f"{name}.jpg")
        for split, count in (("train", 12), ("val", 4)):
            for i in range(count):
                h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
                top, left = int(rng.integers(0, 427 - h)), int(rng.integers(0, 640 - w))
                crop = source[top:top + h, left:left + w]
                if split == "train" and i == 0:
                    crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
                write(root / split / name / f"{i}{'.png' if split == 'train' and i == 1 else '.jpg'}", crop)


def main_args(data: Path, out: Path, name: str) -> list[str]:
    return ["--data", str(data), "--image_size", "32", "32", "-b", "8", "--epochs", "1", "--warmup", "0",
            "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name, "--device", "cpu",
            "--seed", str(SEED), "--no-channels_last", "--no-amp"]


def evaluate(ckpt: Path, out: Path, *extra: str) -> dict:
    entry.run_command(["--evaluation", "--resume", str(ckpt), "--split", "val", "--output", str(out), "-j", "0", *extra])
    return json.loads((out / "report.json").read_text())


def test_training_and_evaluation_through_main(tmp_path):
    photo_classes(tmp_path / "data")
    entry.run_command(main_args(tmp_path / "data", tmp_path, "gpu_decode") + ["--decode", "device", "--aug", "-j", "1"])
    ckpt_path = tmp_path / "ck/gpu_decode/last.pth"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.config["decode"] == "device" and ckpt.config["aug"] == "basic"
    assert np.isfinite(ckpt.metrics["train_loss"]) and np.isfinite(ckpt.metrics["val_loss"])
    # --decode is a runtime flag: evaluation decodes where it is told, and both paths see the same images
    same_path = evaluate(ckpt_path, tmp_path / "eval_device", "--decode", "device")
    assert same_path["samples"] == 8 and same_path["top1"] == pytest.approx(ckpt.metrics["val_top1"])
    loader = evaluate(ckpt_path, tmp_path / "eval_loader")
    assert abs(loader["top1"] - same_path["top1"]) <= 100 / 8  # at most one of 8 images changes its prediction
    with pytest.raises(ValueError, match="--decode device supports only --aug basic"):
        entry.run_command(main_args(tmp_path / "data", tmp_path, "refused") + ["--decode", "device", "--aug", "randaugment"])


def test_torchrun_two_processes(tmp_path):
    photo_classes(tmp_path / "data")
    torchrun(2, [*main_args(tmp_path / "data", tmp_path, "ddp"), "--decode", "device", "--aug", "-j", "0"])
    ckpt_path = tmp_path / "ck/ddp/last.pth"
    # validation under DDP gathered every image once: one process decoding the same way finds the same accuracy
    report = evaluate(ckpt_path, tmp_path / "eval", "--decode", "device")
    assert report["top1"] == pytest.approx(load_checkpoint(ckpt_path).metrics["val_top1"])


# ---------------------------------------------------------------------------------------------------------------
# the benchmark script


def test_benchmark_prints_its_table(tmp_path):
    source = REPO / "data" / "fashion-mnist"
    if not (source / "train").is_dir():
        source = tmp_path / "digits"
        run([sys.executable, "-m", "dataloader.prepare", "digits", "--out", str(source), "--limit", "40"])
    proc = run([sys.executable, "benchmarks/gpu_decode.py", "--root", str(tmp_path), "--source", str(source),
                "--images", "40", "--source_size", "64", "--size", "32", "--repeat", "1", "-b", "8", "--device",
                "cpu"])
    rows = parse_markdown_table(proc.stdout)
    assert [r["path"] for r in rows] == ["--decode loader", "--decode device", "--decode device"], proc.stdout
    for row in rows:
        assert float(row["images/s"]) > 0 and float(row["ratio vs loader per worker"]) > 0, row
    assert "mean absolute difference" in proc.stdout and "environment:" in proc.stdout, proc.stdout
