"""Deployment: conv-BN fusion, the fused TorchScript export, the demo on TorchScript and ONNX files, and smoke runs
of benchmarks/deploy.py and benchmarks/models.py (tables only; no timing is asserted)."""
from __future__ import annotations

import csv
import json
import logging
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
from applications.evaluate import run as evaluate
from engine.export import count_batchnorms, fuse_conv_bn, load_torchscript
from benchmarks.common import parse_markdown_table
from config import Config
from helpers import eager_probs, run
from models import build_model
from utils.logger import get_logger

TRAINING_PACKAGES = {"applications", "models", "criterions", "optim", "dataloader", "utils", "config", "main",
                     "torchvision", "timm"}


@pytest.fixture(scope="module")
def exports(tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """small_cnn trained for one epoch on the tiny digits, exported with --jit and with --onnx."""
    out = tmp_path_factory.mktemp("deploy_run")
    entry.run_command(["--data", str(tiny_digits), "--model", "small_cnn", "--epochs", "1", "--warmup", "0", "-b", "8",
                "-j", "0", "--image_size", "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir",
                str(out / "logs"), "--name", "run", "--device", "cpu", "--no-amp", "--no-channels_last"])
    ckpt = out / "ck" / "run" / "last.pth"
    jit = run([sys.executable, "main.py", "--jit", "--resume", str(ckpt), "--output", str(out / "model.pt")])
    entry.run_command(["--onnx", "--resume", str(ckpt), "--output", str(out / "model.onnx")])
    return {"checkpoint": ckpt, "torchscript": out / "model.pt", "onnx": out / "model.onnx", "jit_log": jit.stdout}


def conv_bn_net() -> nn.Module:
    """Two Conv+BN pairs with BatchNorm statistics far from the identity, in eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return net.eval()


def test_fuse_conv_bn_folds_each_pair_and_keeps_the_outputs():
    net = conv_bn_net()
    fused, folded = fuse_conv_bn(net, "conv_bn_net")
    assert folded == 2 and count_batchnorms(fused) == 0 and count_batchnorms(net) == 2  # the original is untouched
    x = torch.randn(4, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-5)


def test_fuse_conv_bn_leaves_pre_activation_batchnorms():
    # WRN-10-4: the stem conv feeds the first block's bn1, and each block's conv1 feeds its bn2: 4 pairs. The other
    # two bn1 follow a residual addition and the final BN too; they stay.
    net = build_model("wrn10_4", num_classes=10).eval()
    fused, folded = fuse_conv_bn(net, "wrn10_4")
    assert (folded, count_batchnorms(fused)) == (4, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-4, rtol=1e-4)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it symbolically."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if x.sum() > 0 else -x


def test_fuse_conv_bn_falls_back_to_the_unfused_model_with_a_warning(caplog):
    net = DataDependent().eval()
    logger = get_logger()
    logger.addHandler(caplog.handler)  # the project logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            fused, folded = fuse_conv_bn(net, "data_dependent")
    finally:
        logger.removeHandler(caplog.handler)
    assert fused is net and folded == 0
    assert "torch.fx cannot trace data_dependent" in caplog.text




def test_jit_export_is_fused_and_equals_the_unfused_eager_model(exports, tiny_digits):
    assert "folded 6 of 6 BatchNorm layers of small_cnn" in exports["jit_log"]
    assert "top-1 agreement 100.0%" in exports["jit_log"]
    # optimize_for_inference is checked at export and recorded in the file for the loader, whichever way it went
    decision = re.search(r"frozen [\d.]+ ms, with optimize_for_inference [\d.]+ ms: (applied when loaded|left out)",
                         exports["jit_log"])
    assert decision, exports["jit_log"]
    extra = {"meta.json": ""}
    torch.jit.load(str(exports["torchscript"]), _extra_files=extra)
    assert json.loads(extra["meta.json"])["optimize_for_inference"] == (decision[1] == "applied when loaded")
    paths = sorted((tiny_digits / "test").rglob("*.png"))[:5]
    batch, expected, _ = eager_probs(exports["checkpoint"], paths)
    for optimize in (False, True):
        module = load_torchscript(exports["torchscript"], optimize=optimize)
        for n in (1, 5):
            with torch.no_grad():
                got = module(batch[:n])
            torch.testing.assert_close(got, expected[:n], atol=1e-4, rtol=0)
            assert torch.equal(got.argmax(1), expected[:n].argmax(1))


def demo(*args: str) -> str:
    return run([sys.executable, "demos/classifier.py", *map(str, args)]).stdout


def test_demo_classifies_with_both_formats_alike(exports, tiny_digits):
    results = {fmt: {r["image"]: r["predictions"] for r in json.loads(demo(exports[fmt], tiny_digits / "test",
                                                                             "--topk", "3", "--json"))}
               for fmt in ("torchscript", "onnx")}
    assert results["torchscript"].keys() == results["onnx"].keys() and len(results["onnx"]) == 40
    for image, top in results["torchscript"].items():
        other = results["onnx"][image]
        assert [p["class"] for p in top[:1]] == [p["class"] for p in other[:1]], image
        for a, b in zip(top, other):
            if a["class"] == b["class"]:
                assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    paths = sorted((tiny_digits / "test").rglob("*.png"))[:8]
    _, expected, _ = eager_probs(exports["checkpoint"], paths)
    for path, probs in zip(paths, expected):
        top = results["onnx"][str(path)][0]
        assert top["class"] == str(int(probs.argmax())) and top["probability"] == pytest.approx(float(probs.max()),
                                                                                                 abs=1e-4)
    text = demo(exports["onnx"], paths[0], "--threads", "1")
    assert text.startswith(f"{paths[0]}: {results['onnx'][str(paths[0])][0]['class']} ")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_demo_benchmark_prints_latency_percentiles_and_fps(exports, tiny_digits, fmt):
    image = sorted((tiny_digits / "test").rglob("*.png"))[0]
    text = demo(exports[fmt], image, "--benchmark", "7", "--threads", "1")
    match = re.search(r"\(small_cnn, (TorchScript|ONNX), 1 threads\): 7 batch-1 runs after \d+ warm-up: "
                      r"p50 ([\d.]+) ms, p90 ([\d.]+) ms, p99 ([\d.]+) ms, ([\d.]+) FPS", text)
    assert match, text
    assert match[1] == {"torchscript": "TorchScript", "onnx": "ONNX"}[fmt]
    p50, p90, p99, fps = map(float, match.groups()[1:])
    assert 0 < p50 <= p90 <= p99 and fps > 0
    stats = json.loads(demo(exports[fmt], image, "--benchmark", "--json", "--threads", "1"))
    assert stats["runs"] == 200 and stats["batch"] == 1 and stats["p50_ms"] <= stats["p99_ms"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_demo_imports_no_training_code(exports, tiny_digits, fmt):
    image = sorted((tiny_digits / "test").rglob("*.png"))[0]
    code = ("import json, runpy, sys; "
            f"sys.argv = ['classifier.py', {str(exports[fmt])!r}, {str(image)!r}]; "
            "runpy.run_path('demos/classifier.py', run_name='__main__'); "
            "print('PACKAGES', json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    out = run([sys.executable, "-c", code]).stdout
    packages = set(json.loads(out.split("PACKAGES ")[1]))
    assert packages & TRAINING_PACKAGES == set(), out
    assert ("onnxruntime" in packages) == (fmt == "onnx")


def positive_number(text: str) -> float:
    value = float(text)
    assert math.isfinite(value) and value > 0, text
    return value


def test_deploy_benchmark_prints_the_five_variants(tmp_path):
    markdown = tmp_path / "deploy.md"
    out = run([sys.executable, "benchmarks/deploy.py", "--model", "small_cnn", "--size", "32", "--iters", "3",
               "--warmup", "1", "--threads", "2", "--markdown", str(markdown)]).stdout
    rows = parse_markdown_table(out)
    assert [r["variant"].split(" (")[0] for r in rows] == ["eager PyTorch fp32", "TorchScript", "ONNX Runtime fp32",
                                                           "ONNX Runtime fp32, 1 thread", "ONNX Runtime int8"], out
    assert "6 BN fused" in rows[1]["variant"]
    for row in rows:
        for column in ("ms p50", "ms p90", "FPS", "ratio vs eager"):
            positive_number(row[column])
        assert 0 <= float(row["top-1 agreement vs eager"].rstrip("%")) <= 100
    assert rows[0]["ratio vs eager"] == "1.00" and rows[0]["max abs prob diff vs eager"] == "0.00e+00"
    for row in rows[1:4]:  # the float exports compute the same function as eager
        assert float(row["max abs prob diff vs eager"]) <= 1e-4, row
    assert "CPU capability" in out and "ONNX Runtime intra-op threads 2" in out and "target (" in out, out
    assert markdown.read_text().strip() in out


def test_deploy_benchmark_scores_a_checkpoint_on_its_val_split(exports, tmp_path):
    out = run([sys.executable, "benchmarks/deploy.py", "--resume", str(exports["checkpoint"]), "--split", "val",
               "--iters", "3", "--warmup", "1", "--threads", "2", "--no-int8"]).stdout
    rows = {r["variant"].split(" (")[0]: r for r in parse_markdown_table(out)}
    assert list(rows) == ["eager PyTorch fp32", "TorchScript", "ONNX Runtime fp32", "ONNX Runtime fp32, 1 thread"], out
    cfg = Config(resume=str(exports["checkpoint"]), split="val", amp=False, workers=0)
    report = evaluate(cfg, {"resume", "split", "amp", "workers"})  # the evaluation application, fp32
    assert float(rows["eager PyTorch fp32"]["top-1 % on val"]) == pytest.approx(report["top1"], abs=0.006)
    for row in rows.values():  # float exports of the same network: the same predictions
        assert row["top-1 change (points)"] == "+0.00", row
    assert f"top-1 on {report['samples']} images of the val split" in out
    assert "small_cnn (" in out and "32x32" in out and "largest fp32 top-1 change 0.00 points" in out, out


def test_models_benchmark_prints_the_model_table(tmp_path):
    out = run([sys.executable, "benchmarks/models.py", "--models", "small_cnn", "wrn10_4", "--size", "32", "--iters",
               "3", "--warmup", "1", "--threads", "1", "--markdown", str(tmp_path / "models.md")]).stdout
    rows = parse_markdown_table(out)  # the progress lines before it do not start with "|"
    assert [r["model"] for r in rows] == ["small_cnn", "wrn10_4"], out
    assert rows[0]["params (M)"] == "0.29" and rows[0]["source"] == "registry"
    for row in rows:
        gmacs = positive_number(row["GMACs (thop)"])
        assert positive_number(row["GFLOPs (2 x MACs)"]) == pytest.approx(2 * gmacs, abs=0.0011)
        for column in ("eager ms", "TorchScript ms", "ONNX Runtime ms", "best export speed-up vs eager"):
            positive_number(row[column])
    assert "CPU capability" in out and (tmp_path / "models.md").is_file()


def test_models_benchmark_accuracy_columns_come_from_kept_runs(tiny_digits, tmp_path):
    results = tmp_path / "results"
    out = run([sys.executable, "benchmarks/models.py", "--models", "small_cnn", "--size", "32", "--iters", "2",
               "--warmup", "1", "--threads", "1", "--accuracy_data", str(tiny_digits), "--accuracy_size", "16",
               "--accuracy_epochs", "2", "--results", str(results)]).stdout
    row = parse_markdown_table(out)[0]
    kept = results / "small_cnn"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "report.json", "summary.csv", "train.log"]
    report = json.loads((kept / "report.json").read_text())
    assert float(row["test top-1 % (16 px)"]) == pytest.approx(report["top1"], abs=0.006)
    assert report["split"] == "test"
    best_val = max(float(r["val_top1"]) for r in csv.DictReader(open(kept / "summary.csv")))
    assert float(row["val top-1 % (16 px)"]) == pytest.approx(best_val, abs=0.006)
    positive_number(row["train min"])
    assert "Accuracy: trained from scratch" in out and "--optimizer adamw" in out
