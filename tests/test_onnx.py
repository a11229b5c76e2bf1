"""--onnx: a trained checkpoint exported to ONNX and run by ONNX Runtime, --int8, and the errors users meet."""
from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import main as entry
from applications.export_onnx import run as export_onnx
from engine.export import InferenceModel
from engine.onnx import DYNAMO_OPSET, INSTALL_HINT, OPSET, onnx_exporter_of, write_onnx
from config import Config, parse_config
from dataloader import build_split_dataset
from dataloader.preprocess import Preprocessing
from helpers import eager_probs, run
from utils.checkpoint import load_checkpoint
from utils.logger import get_logger


@pytest.fixture(scope="module")
def checkpoint(tiny_digits, tmp_path_factory) -> Path:
    """small_cnn (6 Conv+BN pairs) at 32x32, trained for one epoch on the tiny digits."""
    out = tmp_path_factory.mktemp("onnx_run")
    entry.run_command(["--data", str(tiny_digits), "--model", "small_cnn", "--epochs", "1", "--warmup", "0", "-b", "8",
                "-j", "0", "--image_size", "32", "32", "--checkpoint_dir", str(out / "ck"), "--log_dir",
                str(out / "logs"), "--name", "run", "--device", "cpu", "--no-amp", "--no-channels_last"])
    return out / "ck" / "run" / "last.pth"




def session_of(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_export_matches_eager_with_dynamic_batch_and_metadata(checkpoint, tiny_digits, tmp_path):
    out = tmp_path / "model.onnx"
    result = export_onnx(*parse_config(["--onnx", "--resume", str(checkpoint), "--output", str(out)]))
    assert result.path == out and result.int8_path is None
    assert result.max_diff <= 1e-4 and result.agreement == 100.0

    paths = sorted((tiny_digits / "test").rglob("*.png"))[:5]
    batch, expected, pre = eager_probs(checkpoint, paths)
    session = session_of(out)
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape == ["batch", 3, 32, 32]
    for n in (1, 5):  # the batch axis is dynamic
        got = session.run(None, {inp.name: batch[:n].numpy()})[0]
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, expected[:n].numpy(), atol=1e-4, rtol=0)
        assert (got.argmax(1) == expected[:n].argmax(1).numpy()).all()

    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert Preprocessing.from_dict(json.loads(meta["preprocessing"])) == pre
    assert meta["model"] == "small_cnn" and meta["output"] == "probabilities" and "uint8" in meta["input"]
    assert meta["batchnorm_folded"] == "6"  # every BatchNorm of small_cnn follows a Conv
    assert meta["exporter"] == "dynamo"  # torch.export + onnxscript, where it works
    proto = onnx.load(str(out))
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_int8_export_writes_a_quantised_model_and_reports_val_accuracy(checkpoint, tiny_digits, tmp_path):
    ckpt = tmp_path / "best.pth"  # a copy: the default output paths sit next to the checkpoint
    shutil.copy(checkpoint, ckpt)
    proc = run([sys.executable, "main.py", "--onnx", "--int8", "--resume", str(ckpt)])
    fp32, int8 = tmp_path / "best.onnx", tmp_path / "best.int8.onnx"
    assert fp32.is_file() and int8.is_file(), proc.stdout
    assert "top-1 agreement 100.0%" in proc.stdout
    match = re.search(r"val split \((\d+) images\): top-1 fp32 ONNX ([\d.]+)%, int8 ONNX ([\d.]+)% "
                      r"\(([+-][\d.]+) points\)", proc.stdout)
    assert match, proc.stdout
    count, top1_fp32, top1_int8, change = int(match[1]), float(match[2]), float(match[3]), float(match[4])
    assert change == pytest.approx(top1_int8 - top1_fp32, abs=0.011)
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for node in onnx.load(str(int8)).graph.node)

    # the printed accuracies are those of the two files on every val image
    saved = load_checkpoint(ckpt)
    cfg = Config.from_dict(saved.config)
    val = build_split_dataset(tiny_digits, "val", image_size=tuple(cfg.image_size), class_names=saved.class_names,
                              val_ratio=cfg.val_ratio, seed=cfg.seed)
    assert count == len(val)
    images = torch.stack([val[i][0] for i in range(len(val))]).numpy()
    labels = np.array([val[i][1] for i in range(len(val))])
    for path, printed in ((fp32, top1_fp32), (int8, top1_int8)):
        predicted = session_of(path).run(None, {"images": images})[0].argmax(1)
        assert 100.0 * (predicted == labels).mean() == pytest.approx(printed, abs=0.005)

    # --split picks another split for the comparison
    result = export_onnx(*parse_config(["--onnx", "--int8", "--resume", str(ckpt), "--split", "test",
                                        "--output", str(tmp_path / "t.onnx")]))
    assert result.split == "test" and result.int8_path == tmp_path / "t.int8.onnx" and result.images == 40
    assert 0.0 <= result.top1_int8 <= 100.0 and 0.0 <= result.top1_fp32 <= 100.0


def test_missing_onnx_runtime_names_the_install_command(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is not installed
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        export_onnx(*parse_config(["--onnx", "--resume", str(checkpoint)]))


class EigenFeatures(torch.nn.Module):
    """A network with an operator the ONNX exporter cannot translate (a symmetric eigendecomposition)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mean(1)
        return torch.linalg.eigvalsh(x @ x.transpose(1, 2))


def test_a_model_that_cannot_be_exported_names_it_and_suggests_jit(tmp_path, project_log):
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"eigen_net could not be exported to ONNX .*--jit"):
        write_onnx(EigenFeatures(), images, tmp_path / "x.onnx", model_name="eigen_net")
    assert list(tmp_path.iterdir()) == []  # no half-written file is left behind
    # the dynamo exporter tried first; the log names the operator it has no translation for
    assert "dynamo exporter failed on eigen_net" in project_log.text and "eigh" in project_log.text


@pytest.fixture
def project_log(caplog):
    """caplog on the project logger, which does not propagate to the root logger."""
    logger = get_logger()
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=logger.name)
    yield caplog
    logger.removeHandler(caplog.handler)


def conv_bn_classifier() -> InferenceModel:
    """A small CNN with BatchNorm statistics far from the identity, as the uint8 → probabilities export module."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.2, 3)
    pre = Preprocessing(image_size=(12, 12), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    return InferenceModel(net.eval(), pre, "softmax").eval()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_either_exporter_writes_the_same_function_with_a_dynamic_batch(exporter, tmp_path):
    module = conv_bn_classifier()
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    path = write_onnx(module, images, tmp_path / "m.onnx", model_name="conv_bn", metadata={"model": "conv_bn"},
                      exporter=exporter)
    assert onnx_exporter_of(path) == exporter
    proto = onnx.load(str(path))
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == {"dynamo": DYNAMO_OPSET, "torchscript": OPSET}[exporter]
    session = session_of(path)
    assert session.get_modelmeta().custom_metadata_map["model"] == "conv_bn"
    with torch.no_grad():
        expected = module(images).numpy()
    for n in (1, 6):
        got = session.run(None, {"images": images[:n].numpy()})[0]
        np.testing.assert_allclose(got, expected[:n], atol=1e-5, rtol=0)


def test_without_onnxscript_the_torchscript_exporter_takes_over_and_says_why(tmp_path, monkeypatch, project_log):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # what `import onnxscript` meets when it is not installed
    module = conv_bn_classifier()
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    path = write_onnx(module, images, tmp_path / "m.onnx", model_name="conv_bn")
    assert onnx_exporter_of(path) == "torchscript"
    lines = [r.getMessage() for r in project_log.records if "dynamo exporter failed" in r.getMessage()]
    assert len(lines) == 1 and "onnxscript" in lines[0] and "TorchScript-based exporter" in lines[0], lines
    with pytest.raises(RuntimeError, match="dynamo ONNX exporter .*onnxscript"):  # asked for dynamo only: no fallback
        write_onnx(module, images, tmp_path / "d.onnx", model_name="conv_bn", exporter="dynamo")
