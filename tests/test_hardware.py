import numpy as np
import pytest
import torch

from config import Config
from dataloader import ImageClassificationDataset
from engine.job import open_job
from models import build_model
from utils import hardware
from utils.hardware import (choose_amp, choose_channels_last, choose_inference_amp, choose_matmul_dtype,
                            cpu_has_native_bf16, describe_hardware)

CPU = torch.device("cpu")


def test_flags_win_over_hardware():
    assert choose_amp(True, CPU) is True and choose_amp(False, CPU) is False
    model = build_model("small_cnn", num_classes=3)
    assert choose_channels_last(False, model, (2, 3, 16, 16), CPU, None) == (False, "set by flag")


def test_auto_amp_on_cpu_follows_native_bf16():
    assert choose_amp(None, CPU) == cpu_has_native_bf16()
    assert torch.backends.cpu.get_cpu_capability() in describe_hardware(CPU)


def test_inference_amp_follows_the_training_precision_where_native():
    """An fp32-trained model predicts in fp32 on every machine (as its exports and its logged val did); an
    AMP-trained one keeps AMP only where this machine has it natively; a flag wins either way."""
    assert choose_inference_amp(None, False, CPU) is False
    assert choose_inference_amp(None, None, CPU) is False
    assert choose_inference_amp(None, True, CPU) == cpu_has_native_bf16()
    assert choose_inference_amp(True, False, CPU) is True and choose_inference_amp(False, True, CPU) is False


def test_matmul_dtype_is_bf16_only_where_it_is_native(monkeypatch):
    """An optimizer's own matmuls (Muon's Newton-Schulz) take bf16 on CUDA and on CPUs with native bf16 only."""
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
        assert choose_matmul_dtype(CPU) == expected
        assert choose_matmul_dtype(torch.device("cuda")) == torch.bfloat16


def test_predict_jobs_keep_an_fp32_models_precision_on_a_native_bf16_cpu(monkeypatch):
    """CI on an AMX CPU (2026-12-02): evaluating a --no-amp model in bf16 flipped near-tie labels against the val
    top-1 training logged and against its fp32 TorchScript export. Simulated here on any CPU."""
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    for trained, explicit, expected in ((False, set(), False), (True, set(), True), (None, set(), False),
                                        (False, {"amp"}, False), (True, {"amp"}, True)):
        with open_job(Config(amp=trained, device="cpu"), explicit, checkpoint="none", eval_amp=True) as job:
            assert job.cfg.amp is expected, (trained, explicit)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    with open_job(Config(amp=True, device="cpu"), set(), checkpoint="none", eval_amp=True) as job:
        assert job.cfg.amp is False  # bf16-trained, but emulated bf16 here would be slow: fp32
    with open_job(Config(amp=True, device="cpu"), {"amp"}, checkpoint="none", eval_amp=True) as job:
        assert job.cfg.amp is True  # the flag wins


def test_channels_last_probe_leaves_model_and_rng_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    decision, reason = choose_channels_last(None, model, (4, 3, 28, 28), CPU, None, steps=1)
    assert isinstance(decision, bool) and reason.startswith("probe:")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert next(model.parameters()).grad is None
    again, why = choose_channels_last(None, model, (4, 3, 28, 28), CPU, None, steps=1)
    assert again == decision and why.startswith("cached verdict from") and str(tmp_path) in why
    other, why = choose_channels_last(None, model, (4, 3, 32, 32), CPU, None, steps=1)  # another input: measured
    assert why.startswith("probe:")


def _images(tmp_path, count=6):
    import cv2
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8))
        samples.append((str(path), i % 2))
    return samples


@pytest.mark.parametrize("aug", [False, True])
def test_ram_cache_returns_the_same_items(tmp_path, aug):
    samples = _images(tmp_path)
    plain = ImageClassificationDataset(samples, ["a", "b"], image_size=(24, 24), aug=aug, seed=3)
    cached = ImageClassificationDataset(samples, ["a", "b"], image_size=(24, 24), aug=aug, seed=3)
    assert cached.cache_in_ram() > 0
    for key in [(i, epoch) for i in range(len(samples)) for epoch in (0, 1)]:
        a, b = plain[key], cached[key]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    item = cached[(0, 0)][0]
    item.fill_(7)  # callers may modify what they get; the cache must not change
    assert torch.equal(cached[(0, 0)][0], plain[(0, 0)][0])


def test_ram_cache_refuses_what_does_not_fit(tmp_path):
    samples = _images(tmp_path, 2)
    huge = ImageClassificationDataset(samples * 100_000, ["a", "b"], image_size=(4000, 4000))
    with pytest.raises(MemoryError, match="--cache_images ram needs"):
        huge.cache_in_ram()
