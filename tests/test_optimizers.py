"""Every registered optimizer trains, resumes exactly through a weights_only checkpoint and spares norms and
biases from weight decay; parameter groups, batch lr scaling, Lookahead and AdaBound's bounds."""
from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import timm.optim.muon
import torch
from torch import nn

import main as entry
from config import build_parser
from optim import OPTIMIZERS, build_optimizer, build_scheduler, param_groups, scale_lr_by_batch
from optim.adabound import AdaBound
from utils import hardware
from utils.checkpoint import load_checkpoint


# A learning rate that suits each optimizer on the tiny problem below; a new registry entry must add one.
LRS = {"sgd": 0.1, "adam": 0.03, "adamw": 0.03, "radam": 0.1, "nadam": 0.03, "ranger": 0.1, "lamb": 0.03,
       "adabelief": 0.03, "novograd": 0.03, "adabound": 0.03, "muon": 0.03}
CASES = [(name, lookahead) for name in sorted(LRS) for lookahead in (False, True)]


def tiny_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 3-class problem labelled by a random linear teacher, and a small MLP with a norm layer and biases."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = (x @ torch.randn(8, 3, generator=gen)).argmax(dim=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    return model, x, y


def make_optimizer(model: nn.Module, name: str, lookahead: bool, weight_decay: float = 1e-4, lr: float | None = None):
    return build_optimizer(param_groups(model, weight_decay), name, lr=LRS[name] if lr is None else lr,
                           weight_decay=weight_decay, lookahead=lookahead, lookahead_k=3)


def train_steps(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_every_registered_optimizer_is_covered():
    assert set(LRS) == set(OPTIMIZERS), "add the new optimizer to LRS (and so to every test below)"


def test_flag_help_lists_every_optimizer_and_schedule():
    from optim import SCHEDULES
    helps = {a.dest: a.help for a in build_parser()._actions}
    assert all(name in helps["optimizer"] for name in OPTIMIZERS)
    assert all(name in helps["lr_schedule"] for name in SCHEDULES)


@pytest.mark.parametrize("name,lookahead", CASES)
def test_optimizer_reduces_the_loss(name, lookahead):
    model, x, y = tiny_problem()
    losses = train_steps(model, make_optimizer(model, name, lookahead), x, y, 40)
    assert losses[-1] < 0.5 * losses[0], f"{name}: {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name,lookahead", CASES)
def test_state_dict_round_trips_through_weights_only_load(name, lookahead):
    """Continue after a save/load exactly as without it (Lookahead's slow weights and step count included)."""
    model, x, y = tiny_problem()
    optimizer = make_optimizer(model, name, lookahead)
    train_steps(model, optimizer, x, y, 4)  # k=3: the slow weights exist and the counter is mid-cycle
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    if lookahead or name == "ranger":
        assert any("lookahead_slow_buff" in s for s in state["optimizer"]["state"].values())
        assert state["optimizer"]["param_groups"][0]["lookahead_step"] == 4
    resumed_model = copy.deepcopy(model)
    resumed = make_optimizer(resumed_model, name, lookahead)
    resumed.load_state_dict(state["optimizer"])
    train_steps(model, optimizer, x, y, 5)
    train_steps(resumed_model, resumed, x, y, 5)
    for (key, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs after the round trip"


@pytest.mark.parametrize("name", sorted(LRS))
def test_no_weight_decay_on_norms_and_biases(name):
    """With zero gradients only weight decay moves parameters: the 2-d weights move, 1-d ones stay put."""
    model, x, _ = tiny_problem()
    optimizer = make_optimizer(model, name, lookahead=False, weight_decay=0.1, lr=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for _ in range(2):
        optimizer.zero_grad()
        (0.0 * model(x).sum()).backward()
        optimizer.step()
    for key, param in model.named_parameters():
        if param.ndim == 1:
            assert torch.equal(param, before[key]), f"{name} decayed {key}"
        else:
            assert not torch.equal(param, before[key]), f"{name} did not decay {key}"


def test_discriminative_lr_groups_combine_with_the_decay_split():
    model, _, _ = tiny_problem()
    groups = param_groups(model, 0.05, head="3", backbone_lr_scale=0.1)
    optimizer = build_optimizer(groups, "adamw", lr=0.01, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    layout = [(sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"])
              for g in optimizer.param_groups]
    assert layout == [(["3.weight"], 0.01, 0.05), (["3.bias"], 0.01, 0.0),
                      (["0.weight"], pytest.approx(0.001), 0.05),
                      (["0.bias", "1.bias", "1.weight"], pytest.approx(0.001), 0.0)]
    scheduler = build_scheduler(optimizer, "cosine", epochs=4, warmup=1, steps_per_epoch=3)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[2] == pytest.approx(0.1 * lrs[0]) and lrs[0] < 0.01


def test_discriminative_lr_needs_the_head_name():
    model, _, _ = tiny_problem()
    with pytest.raises(ValueError, match="head"):
        param_groups(model, 0.0, backbone_lr_scale=0.1)
    assert len(param_groups(model, 0.0)) == 2  # the default layout, as in checkpoints before this option


def test_ranger_is_radam_inside_lookahead_with_the_given_k():
    model, _, _ = tiny_problem()
    optimizer = build_optimizer(param_groups(model, 0.0), "ranger", lr=1e-3, lookahead_k=4, lookahead_alpha=0.3)
    assert type(optimizer).__name__ == "Lookahead"
    assert isinstance(optimizer._base_optimizer, torch.optim.RAdam)
    assert (optimizer.param_groups[0]["lookahead_k"], optimizer.param_groups[0]["lookahead_alpha"]) == (4, 0.3)
    twice = build_optimizer(param_groups(model, 0.0), "ranger", lr=1e-3, lookahead=True)
    assert not isinstance(twice._base_optimizer, type(twice))  # --lookahead with ranger does not wrap twice


def test_lookahead_pulls_fast_weights_back_every_k_steps():
    """Every k steps the weights become slow + alpha * (fast - slow). timm creates the slow weights lazily at the
    first sync (they start as the weights after k steps, not before them), so the pull-back shows from 2k on."""
    param = nn.Parameter(torch.tensor([1.0]))
    optimizer = build_optimizer([param], "sgd", lr=0.1, momentum=0.0, lookahead=True, lookahead_k=2,
                                lookahead_alpha=0.5)
    trace = []
    for _ in range(4):
        optimizer.zero_grad()
        param.sum().backward()  # gradient 1: each SGD step subtracts 0.1
        optimizer.step()
        trace.append(param.item())
    # 0.9, 0.8 (slow := 0.8), 0.7, 0.6 -> pulled back to 0.8 + 0.5 * (0.6 - 0.8)
    assert trace == pytest.approx([0.9, 0.8, 0.7, 0.7])


def test_scale_lr_by_batch_is_linear():
    assert scale_lr_by_batch(0.1, global_batch=512, reference=256) == pytest.approx(0.2)
    assert scale_lr_by_batch(0.1, global_batch=64, reference=None) == 0.1
    with pytest.raises(ValueError, match="--lr_scale_batch"):
        scale_lr_by_batch(0.1, global_batch=64, reference=0)


def test_adabound_clamps_step_sizes_into_bounds_that_follow_the_lr():
    param = nn.Parameter(torch.tensor([1.0]))
    optimizer = AdaBound([param], lr=1e-3, final_lr=1.0, gamma=0.5)
    for lr in (1e-3, 5e-4):  # the second step as a schedule would set it: bounds scale with lr / base_lr
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad()
        param.sum().backward()
        optimizer.step()
    # step 1: m = 0.1, Adam's step size ~0.01 is lifted to lower = 1 * (1 - 1/1.5) = 1/3 -> update 0.1/3
    # step 2: final_lr 0.5, m = 0.19, lower = 0.5 * (1 - 1/2) = 0.25 -> update 0.0475
    assert param.item() == pytest.approx(1.0 - 0.1 / 3 - 0.25 * 0.19, rel=1e-6)


def test_adabound_starts_like_adam():
    a, b = nn.Parameter(torch.tensor([1.0, -2.0])), nn.Parameter(torch.tensor([1.0, -2.0]))
    adabound, adam = AdaBound([a], lr=1e-3), torch.optim.Adam([b], lr=1e-3)
    for param, optimizer in ((a, adabound), (b, adam)):
        (param ** 2).sum().backward()
        optimizer.step()
    assert torch.allclose(a, b, rtol=0, atol=1e-9)


def run_main(data: Path, out: Path, name: str, extra: list[str]) -> dict:
    entry.run_command(["--data", str(data), "--epochs", "3", "--warmup", "0", "-b", "8", "-j", "0", "--image_size", "32",
                "32", "--checkpoint_dir", str(out / "ck"), "--log_dir", str(out / "logs"), "--name", name,
                "--device", "cpu", "--no-amp", "--no-channels_last", "--seed", "5", *extra])
    return load_checkpoint(out / "ck" / name / "last.pth")


def test_lr_scale_batch_scales_once_and_resume_keeps_it(tiny_digits, tmp_path):
    flags = ["--optimizer", "sgd", "--lr", "0.01", "--lr_scale_batch", "4", "--lr_schedule", "cosine"]
    first = run_main(tiny_digits, tmp_path, "scaled", flags + ["--stop_epoch", "1"])
    assert first.config["lr"] == 0.01  # the config keeps the unscaled lr ...
    assert first.scheduler["base_lrs"] == pytest.approx([0.02, 0.02])  # ... batch 8 / 4 doubles it
    entry.run_command(["--resume", str(tmp_path / "ck/scaled/last.pth"), "-j", "0"])
    resumed = load_checkpoint(tmp_path / "ck/scaled/last.pth")
    assert resumed.epoch == 2
    assert resumed.scheduler["base_lrs"] == pytest.approx([0.02, 0.02])  # not scaled a second time
    assert "global batch 8 / 4" in (tmp_path / "ck/scaled/train.log").read_text()


def test_backbone_lr_scale_reaches_the_checkpointed_optimizer(tiny_digits, tmp_path):
    ckpt = run_main(tiny_digits, tmp_path, "disc", ["--backbone_lr_scale", "0.1", "--optimizer", "adamw",
                                                    "--lr_schedule", "cosine", "--stop_epoch", "1"])
    groups = ckpt.optimizer["param_groups"]
    assert [len(g["params"]) for g in groups[:2]] == [1, 1]  # small_cnn's fc.weight and fc.bias
    assert groups[2]["lr"] == pytest.approx(0.1 * groups[0]["lr"]) and groups[0]["lr"] > 0


def assert_resume_is_bit_identical(data: Path, out: Path, flags: list[str]):
    """Run ``flags`` uninterrupted and again stopped after epoch 1 and resumed; both must end with the same weights.
    Returns the uninterrupted run's checkpoint."""
    full = run_main(data, out, "full", flags)
    run_main(data, out, "split", flags + ["--stop_epoch", "1"])
    entry.run_command(["--resume", str(out / "ck/split/last.pth"), "-j", "0"])
    split = load_checkpoint(out / "ck/split/last.pth")
    assert full.epoch == split.epoch == 2
    for key, tensor in full.model.items():
        assert torch.equal(tensor, split.model[key]), f"{key} differs after resume"
    return full


def test_lookahead_run_resumes_bit_identically(tiny_digits, tmp_path):
    """5 steps per epoch with k=3: the resumed run must continue Lookahead's cycle mid-way, slow weights and all."""
    full = assert_resume_is_bit_identical(tiny_digits, tmp_path,
                                          ["--optimizer", "ranger", "--lookahead_k", "3", "--lr", "0.003"])
    assert full.optimizer["param_groups"][0]["lookahead_step"] == 15


def test_muon_orthogonalises_convolution_updates_and_leaves_norms_to_adamw():
    """Convolutions and wide matrices take Muon's update: after one step from rest the change of a conv's
    flattened (8, 27) weight has all its singular values at lr * 0.2 * sqrt(27), where the gradient's spread over
    more than a factor of 2; BN parameters and a 3-wide head take NAdamW."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    optimizer = make_optimizer(model, "muon", lookahead=False, weight_decay=0.0)
    conv = model[0].weight
    before = conv.detach().clone()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    train_steps(model, optimizer, x, y, 1)
    routed = {name: optimizer.state[p]["use_muon"] for name, p in model.named_parameters()}
    assert routed == {"0.weight": True, "0.bias": False, "1.weight": False, "1.bias": False, "4.weight": False,
                      "4.bias": False}
    singular = torch.linalg.svdvals((conv - before).reshape(8, -1))
    gradient = torch.linalg.svdvals(conv.grad.reshape(8, -1))  # what SGD's step would have been
    expected = LRS["muon"] * 0.2 * 27 ** 0.5
    assert torch.allclose(singular, torch.full_like(singular, expected), rtol=0.1), (singular, expected)
    assert gradient.min() < 0.5 * gradient.max(), gradient


@pytest.mark.parametrize("native_bf16", [False, True])
def test_muon_runs_newton_schulz_in_fp32_where_bf16_is_emulated(monkeypatch, native_bf16):
    """timm runs Newton-Schulz in bf16; where the CPU has no native bf16 ours runs it in fp32 (faster there, and
    more exact): a conv's first step from rest is -lr * 0.2 * sqrt(27) times the orthogonalised gradient, which
    matches the float64 iteration to 1e-4 in fp32 but not in bf16. timm's module is left as it was."""
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native_bf16)
    dtypes = []
    iteration = timm.optim.muon.zeropower_via_newtonschulz

    def spy(*args, **kwargs):
        dtypes.append(kwargs.get("dtype", torch.bfloat16))
        return iteration(*args, **kwargs)

    monkeypatch.setattr(timm.optim.muon, "zeropower_via_newtonschulz", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    optimizer = make_optimizer(model, "muon", lookahead=False, weight_decay=0.0)
    conv = model[0].weight
    before = conv.detach().clone()
    train_steps(model, optimizer, torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,)), 1)
    assert dtypes == [torch.bfloat16 if native_bf16 else torch.float32]
    assert timm.optim.muon.zeropower_via_newtonschulz is spy
    step = (before - conv.detach()).reshape(8, -1) / (LRS["muon"] * 0.2 * 27 ** 0.5)
    exact = iteration(conv.grad.reshape(8, -1).double(), 5, timm.optim.muon.resolve_ns_coefficients(
        "quintic", timm.optim.muon._COEFFICIENTS), dtype=torch.float64).float()
    error = ((step - exact).norm() / exact.norm()).item()
    assert (error > 1e-3) if native_bf16 else (error < 1e-4), error


def test_muon_run_resumes_bit_identically(tiny_digits, tmp_path):
    """Through main.py: Muon's momentum buffers, its per-parameter routing and the fallback's moments all live in
    the weights_only checkpoint, so a run stopped after epoch 1 and resumed ends with the uninterrupted weights."""
    full = assert_resume_is_bit_identical(tiny_digits, tmp_path, ["--optimizer", "muon", "--lr", "0.003",
                                                                  "--weight_decay", "0.05", "--momentum", "0.95"])
    assert any(state["use_muon"] for state in full.optimizer["state"].values())
