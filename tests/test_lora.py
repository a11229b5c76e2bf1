"""``--lora R`` (peft adapters + the whole head train, the base stays bit-identical, checkpoints hold adapters and
head only, exports merge) and ``--freeze_stages K`` (stem and first K stages frozen, BatchNorm statistics too)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import main as entry
from config import Config
from dataloader.preprocess import load_image_tensor, normalize_on_device
from engine.components import lora_model, model_from_checkpoint, preprocessing_of
from helpers import torchrun
from models import build_model
from models.lora import (ADAPTER_MARK, add_lora, default_lora_targets, load_adapter_state, merge_lora, model_stages,
                         resolve_lora_targets, stage_trainable)
from utils.checkpoint import load_checkpoint
from utils.errors import UsageError


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """'Pretrained' weights of small_cnn for 10 classes as a plain state dict (a fixed seed)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "small_cnn.pth"
    torch.save(build_model("small_cnn", num_classes=10).state_dict(), path)
    return path


def common_args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--epochs", "3", "--warmup", "0", "-b", "8", "-j", "0", "--image_size", "32", "32",
            "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name, "--device", "cpu",
            "--no-amp", "--no-channels_last", "--optimizer", "adam", "--lr", "0.01", "--lr_schedule", "cosine",
            "--seed", "3", *extra]


def lora_args(data: Path, out: Path, name: str, base: Path, *extra: str) -> list[str]:
    return common_args(data, out, name, "--pretrained", str(base), "--lora", "4", *extra)


def test_default_targets_per_family():
    resnet = build_model("resnet18", num_classes=5)
    targets = default_lora_targets(resnet)
    assert {"conv1", "layer1.0.conv1", "layer4.1.conv2", "layer2.0.downsample.0"} <= set(targets)
    assert "fc" not in targets and len(targets) == 20  # 17 convolutions + 3 downsample convolutions
    vit = build_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8)
    assert default_lora_targets(vit) == [f"blocks.{i}.attn.qkv" for i in range(12)]
    assert resolve_lora_targets(resnet, ["layer4.*"], "resnet18") == [t for t in targets if t.startswith("layer4.")]
    with pytest.raises(ValueError, match="--lora_targets 'head.*' matches no Linear/Conv2d layer of resnet18"):
        resolve_lora_targets(resnet, ["head.*"], "resnet18")


def test_adapters_start_as_the_identity_and_merge_back_to_the_architecture():
    torch.manual_seed(0)
    vit = build_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    before = vit(x)
    keys = set(vit.state_dict())
    add_lora(vit, rank=2, alpha=4.0, dropout=0.0, targets=default_lora_targets(vit))
    assert torch.equal(vit(x), before)  # lora_B starts at zero
    adapters = [p for n, p in vit.named_parameters() if ADAPTER_MARK in n]
    assert len(adapters) == 24 and sum(p.numel() for p in adapters) == 12 * 2 * (192 + 576)
    with torch.no_grad():
        for p in adapters:
            p.normal_(std=0.05)
    adapted = vit(x)
    assert (adapted - before).abs().max() > 1e-3
    merged = merge_lora(vit)
    assert set(merged.state_dict()) == keys and isinstance(merged.blocks[0].attn.qkv, nn.Linear)
    torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def lora_run(tiny_digits, base, tmp_path_factory) -> Path:
    """A 3-epoch LoRA run of small_cnn from ``base`` (the other tests read its checkpoints)."""
    out = tmp_path_factory.mktemp("lora")
    entry.run_command(lora_args(tiny_digits, out, "lora", base))
    return out


def test_only_adapters_and_head_train_and_the_base_stays_bit_identical(tiny_digits, base, tmp_path, recorded):
    entry.run_command(lora_args(tiny_digits, tmp_path, "lora", base, "--stop_epoch", "1", "--lora_alpha", "6",
                                "--lora_dropout", "0.1"))
    start, after = recorded["wrapped"][0], recorded["epochs"][0]
    adapters = {k for k in start if ADAPTER_MARK in k}
    assert start["trainable"] == adapters | {"fc.weight", "fc.bias"} and len(adapters) > 10
    file = torch.load(base, weights_only=True)
    frozen = [k for k in start if k != "trainable" and k not in start["trainable"]]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:  # weights and BatchNorm statistics: those of the base file, untouched by the epoch
        assert torch.equal(after[key], file[key.replace(".base_layer", "")]), f"{key} changed"
    assert not torch.equal(after["fc.weight"], start["fc.weight"])
    changed_b = [k for k in adapters if "lora_B" in k and after[k].abs().max() > 0]
    assert len(changed_b) == len(adapters) // 2  # every lora_B left zero
    ckpt = load_checkpoint(tmp_path / "ck/lora/last.pth")
    assert set(ckpt.model) == start["trainable"] and ckpt.base["path"] == str(base.resolve())
    assert (tmp_path / "ck/lora/last.pth").stat().st_size < base.stat().st_size / 2
    cfg = Config.from_dict(ckpt.config)
    assert (cfg.lora, cfg.lora_alpha, cfg.lora_dropout, len(cfg.lora_targets)) == (4, 6.0, 0.1, len(adapters) // 2)
    log = (tmp_path / "ck/lora/train.log").read_text()
    assert "parameters: 302,166 total, 14,710 trainable (4.87%)" in log


def test_merged_equals_unmerged_and_differs_from_the_base(lora_run, tiny_digits):
    ckpt = load_checkpoint(lora_run / "ck/lora/best.pth")
    cfg = Config.from_dict(ckpt.config)
    assert cfg.lora_alpha == 8.0  # 2 x rank by default
    unmerged = lora_model(cfg, base=cfg.pretrained, num_classes=10)
    load_adapter_state(unmerged, ckpt.model)
    merged = model_from_checkpoint(ckpt, cfg, torch.device("cpu"))
    assert not any(ADAPTER_MARK in k for k in merged.state_dict())
    base_model = build_model("small_cnn", num_classes=10)
    base_model.load_state_dict(torch.load(cfg.pretrained, weights_only=True))
    pre = preprocessing_of(cfg)
    images = sorted((tiny_digits / "test").rglob("*.png"))[:16]
    x = normalize_on_device(torch.stack([load_image_tensor(p, pre) for p in images]), pre.mean, pre.std)
    with torch.no_grad():
        logits = [m.eval()(x) for m in (unmerged, merged, base_model)]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
    assert (logits[0] - logits[2]).abs().max() > 1e-2


def test_resume_from_a_lora_checkpoint_equals_an_uninterrupted_run(lora_run, tiny_digits, base, tmp_path):
    entry.run_command(lora_args(tiny_digits, tmp_path, "split", base, "--stop_epoch", "1"))
    entry.run_command(["--resume", str(tmp_path / "ck/split/last.pth"), "-j", "0"])
    full, split = (load_checkpoint(p) for p in (lora_run / "ck/lora/last.pth", tmp_path / "ck/split/last.pth"))
    assert full.epoch == split.epoch == 2 and full.model.keys() == split.model.keys()
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"


def test_evaluation_torchscript_and_onnx_use_the_merged_model(lora_run, tiny_digits, tmp_path):
    best = lora_run / "ck/lora/best.pth"
    report = entry.run_command(["--evaluation", "--resume", str(best), "-j", "0", "--split", "val", "--output",
                                str(tmp_path / "ev")])
    ckpt = load_checkpoint(best)
    assert report["top1"] == pytest.approx(ckpt.best_top1)  # the merged model scores what training validated
    entry.run_command(["--jit", "--resume", str(best), "-j", "0", "--output", str(tmp_path / "m.pt")])
    cfg = Config.from_dict(ckpt.config)
    unmerged = lora_model(cfg, base=cfg.pretrained, num_classes=10)
    load_adapter_state(unmerged, ckpt.model)
    pre = preprocessing_of(cfg)
    batch = torch.stack([load_image_tensor(p, pre) for p in sorted((tiny_digits / "val").rglob("*.png"))[:8]])
    with torch.no_grad():
        expected = torch.softmax(unmerged.eval()(normalize_on_device(batch, pre.mean, pre.std)), dim=1)
        exported = torch.jit.load(str(tmp_path / "m.pt"))(batch)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-4)
    import onnxruntime

    entry.run_command(["--onnx", "--resume", str(best), "-j", "0", "--output", str(tmp_path / "m.onnx")])
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_probs), expected, atol=1e-5, rtol=1e-4)


def test_a_lora_checkpoint_is_refused_as_pretrained_weights(lora_run):
    from models.pretrained import read_state_dict
    from utils.errors import DataError

    with pytest.raises(DataError, match="is a LoRA checkpoint holding adapters and head only"):
        read_state_dict(lora_run / "ck/lora/best.pth")


def test_averaged_lora_checkpoints_evaluate_and_refuse_update_bn(lora_run, tmp_path):
    run = lora_run / "ck/lora"
    out = entry.run_command(["--average", str(run / "best.pth"), str(run / "last.pth"), "--output",
                             str(tmp_path / "avg.pth"), "-j", "0"])
    averaged = load_checkpoint(out)
    assert averaged.base == load_checkpoint(run / "last.pth").base and set(averaged.model) == set(averaged.train_model)
    report = entry.run_command(["--evaluation", "--resume", str(out), "-j", "0", "--output", str(tmp_path / "ev")])
    assert 0 <= report["top1"] <= 100
    with pytest.raises(UsageError, match="--update_bn: .* is a LoRA checkpoint"):
        entry.run_command(["--average", str(run / "best.pth"), str(run / "last.pth"), "--update_bn", "-j", "0",
                           "--output", str(tmp_path / "avg2.pth")])


def test_a_moved_base_file_is_one_error_line(lora_run, tmp_path, capsys):
    ckpt = load_checkpoint(lora_run / "ck/lora/best.pth")
    moved = ckpt.replace(base={**ckpt.base, "path": str(tmp_path / "gone.pth")})
    from utils.checkpoint import save_checkpoint

    save_checkpoint(moved, tmp_path / "moved.pth")
    with pytest.raises(SystemExit) as stop:
        entry.main(["--evaluation", "--resume", str(tmp_path / "moved.pth"), "-j", "0"])
    assert stop.value.code == 2
    assert "its base weights " + str(tmp_path / "gone.pth") + " is missing" in capsys.readouterr().err


@pytest.mark.parametrize("flags, needle", [
    (["--lora", "4"], "--lora adapts pretrained weights: add --pretrained FILE"),
    (["--lora", "4", "--pretrained", "BASE", "--ema"], "--lora freezes part of the model"),
    (["--lora", "4", "--pretrained", "BASE", "--lora_targets", "nope*"], "--lora_targets 'nope*' matches no"),
    (["--freeze_stages", "5", "--model", "resnet18"], "--freeze_stages must be between 1 and 4: resnet18 has 4"),
    (["--freeze_stages", "2", "--freeze", "1"], "--freeze_stages freezes part of the model"),
])
def test_usage_errors_are_one_line(tiny_digits, base, tmp_path, capsys, flags, needle):
    flags = [str(base) if f == "BASE" else f for f in flags]
    with pytest.raises(SystemExit) as stop:
        entry.main(common_args(tiny_digits, tmp_path, "bad", *flags))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("error: ") and needle in err[-1], err


def test_lora_under_torchrun_keeps_both_ranks_identical(tiny_digits, base, tmp_path):
    """2 processes (gloo): the adapters and head are all-reduced (identical on both ranks after each epoch) and
    the frozen base is not trained. tests/freeze_ddp_worker.py records digests of the non-head parameters (the
    base and the adapters) and the head on every rank."""
    out = tmp_path / "digests"
    torchrun(2, [str(out), "--", *lora_args(tiny_digits, tmp_path, "ddp", base, "--epochs", "2")],
             script="tests/freeze_ddp_worker.py")
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    (start,), (first, second) = rank0["wrapped"], rank0["epochs"]
    assert not start["backbone_trainable"]  # the base's parameters (and the adapters') are not all trainable
    assert start["backbone"] != first["backbone"] != second["backbone"]  # the adapters train
    assert start["head"] != first["head"]
    ckpt = load_checkpoint(tmp_path / "ck/ddp/last.pth")
    assert ckpt.world_size == 2 and ckpt.base is not None and all(ADAPTER_MARK in k or k.startswith("fc.")
                                                                  for k in ckpt.model)


# --- --freeze_stages ---------------------------------------------------------------------------------------------


def test_stages_of_each_family():
    assert model_stages(build_model("resnet18", num_classes=3)) == ["layer1", "layer2", "layer3", "layer4"]
    assert model_stages(build_model("convnext_atto", num_classes=3)) == [f"stages.{i}" for i in range(4)]
    assert len(model_stages(build_model("efficientnet_b0", num_classes=3))) == 9  # torchvision features
    vit = build_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8)
    trainable = stage_trainable(vit, 10, "vit")
    assert {n.split(".")[0] for n in trainable} == {"blocks", "norm", "head"}
    assert all(n.startswith(("blocks.10.", "blocks.11.", "norm.", "head.")) for n in trainable)
    assert model_stages(nn.Sequential(nn.Linear(2, 2))) == []


def test_freeze_stages_trains_only_the_deep_stages_of_resnet18(tiny_digits, tmp_path, recorded):
    entry.run_command(common_args(tiny_digits, tmp_path, "stages", "--model", "resnet18", "--freeze_stages", "2",
                                  "--stop_epoch", "1"))
    start, after = recorded["wrapped"][0], recorded["epochs"][0]
    assert {n.split(".")[0] for n in start["trainable"]} == {"layer3", "layer4", "fc"}
    for key in (k for k in start if k != "trainable"):
        frozen = key.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
        if frozen or "num_batches_tracked" not in key:
            assert torch.equal(after[key], start[key]) == frozen, f"{key}: frozen {frozen}"
    trained = sum(p.numel() for n, p in build_model("resnet18", num_classes=10).named_parameters()
                  if n in start["trainable"])
    assert f"total, {trained:,} trainable" in (tmp_path / "ck/stages/train.log").read_text()
    ckpt = load_checkpoint(tmp_path / "ck/stages/last.pth")
    assert ckpt.base is None and set(ckpt.model) == set(start) - {"trainable"}  # the whole model is stored


def test_freeze_stages_under_torchrun_keeps_both_ranks_identical(tiny_digits, tmp_path):
    """2 processes (gloo): the deep stage and the head are all-reduced, the frozen ones stay as they started."""
    out = tmp_path / "digests"
    args = common_args(tiny_digits, tmp_path, "ddp", "--freeze_stages", "2", "--epochs", "2")
    torchrun(2, [str(out), "--", *args], script="tests/freeze_ddp_worker.py")
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    (start,), (first, second) = rank0["wrapped"], rank0["epochs"]
    assert not start["backbone_trainable"]
    assert start["backbone"] != first["backbone"] != second["backbone"] and start["head"] != first["head"]
    ckpt = load_checkpoint(tmp_path / "ck/ddp/last.pth")
    assert ckpt.world_size == 2 and ckpt.base is None
