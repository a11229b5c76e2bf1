"""Tests for criterions/: every registered loss under every switch, plus hand computations of each one."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from criterions import (CRITERIONS, GradientHarmonizer, build_criterion, class_weights_from_targets,
                        read_class_weights, resolve_class_weights, resolve_head)

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
TARGETS = torch.tensor([0, 2])
SCALE = 4.0  # margin losses read logits as SCALE * cos, so the property tests keep |logits| < SCALE

# The seed's switches one by one and together; each runs against every registered loss below.
SWITCHES = {
    "plain": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "class_weights": {"class_weights": [0.5, 1.0, 2.0, 1.5]},
    "threshold": {"loss_threshold": 0.6},
    "ghm": {"ghm_bins": 5},
    "ghm_momentum": {"ghm_bins": 5, "ghm_momentum": 0.75},
    "ohm": {"ohm_ratio": 0.5},
    "threshold_ohm": {"loss_threshold": 0.6, "ohm_ratio": 0.7},
    "all": {"label_smoothing": 0.1, "class_weights": [0.5, 1.0, 2.0, 1.5], "loss_threshold": 0.6, "ghm_bins": 10,
            "ghm_momentum": 0.5, "ohm_ratio": 0.7},
}
# Losses with a hand-computed test further down; a newly registered loss fails test_registry_coverage until added.
HAND_TESTED = {"softmax", "bce", "focal", "arcface", "amsoftmax"}


def make(name: str, **switches) -> torch.nn.Module:
    return build_criterion(name, num_classes=4, arc_scale=SCALE, arc_margin=0.3, **switches)


def batch(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cosines = torch.rand(n, 4, generator=generator) * 1.8 - 0.9
    return SCALE * cosines, torch.randint(0, 4, (n,), generator=generator)


def loss_and_grad(criterion, logits, targets, weight=None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_()
    loss = criterion(logits, targets, weight)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("name", list(CRITERIONS))
def test_finite_scalar_with_gradient(name, switch):
    logits, targets = batch()
    loss, grad = loss_and_grad(make(name, **SWITCHES[switch]), logits, targets)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("name", list(CRITERIONS))
def test_one_hot_soft_targets_equal_int_targets(name, switch):
    logits, targets = batch(1)
    loss_int, grad_int = loss_and_grad(make(name, **SWITCHES[switch]), logits, targets)
    loss_soft, grad_soft = loss_and_grad(make(name, **SWITCHES[switch]), logits, F.one_hot(targets, 4).float())
    assert torch.allclose(loss_int, loss_soft, atol=1e-6)
    assert torch.allclose(grad_int, grad_soft, atol=1e-6)


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("name", list(CRITERIONS))
def test_mixed_soft_targets(name, switch):
    # mixup of each sample's label with the next one's: (N, C) probabilities with two non-zero entries
    logits, targets = batch(2)
    mixed = 0.7 * F.one_hot(targets, 4).float() + 0.3 * F.one_hot(targets.roll(1), 4).float()
    loss, grad = loss_and_grad(make(name, **SWITCHES[switch]), logits, mixed)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("name", list(CRITERIONS))
def test_zero_weight_removes_a_samples_gradient(name, switch):
    logits, targets = batch(3)
    weight = torch.ones(8)
    weight[[0, 5]] = 0.0
    loss, grad = loss_and_grad(make(name, **SWITCHES[switch]), logits, targets, weight)
    assert torch.isfinite(loss)
    assert grad[[0, 5]].abs().sum() == 0
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("switch", ["plain", "all"])
@pytest.mark.parametrize("name", list(CRITERIONS))
def test_bf16_logits(name, switch):
    logits, targets = batch(4)
    logits = logits.bfloat16().requires_grad_()
    loss = make(name, **SWITCHES[switch])(logits, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()
    reference = make(name, **SWITCHES[switch])(logits.detach().float(), targets)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("name", list(CRITERIONS))
def test_per_sample_weights_reach_the_loss(name):
    criterion = build_criterion(name, num_classes=3, label_smoothing=0.1, arc_scale=SCALE)
    only_first = criterion(LOGITS, TARGETS, weight=torch.tensor([1.0, 0.0]))
    assert float(only_first) == pytest.approx(float(criterion(LOGITS[:1], TARGETS[:1])), rel=1e-6)
    weighted = criterion(LOGITS, TARGETS, weight=torch.tensor([3.0, 1.0]))
    expected = (3 * criterion(LOGITS[:1], TARGETS[:1]) + criterion(LOGITS[1:], TARGETS[1:])) / 4
    assert float(weighted) == pytest.approx(float(expected), rel=1e-6)


def test_registry_coverage_and_unknown_name():
    assert set(CRITERIONS) == HAND_TESTED, "add a hand-computed test for the new loss and list it in HAND_TESTED"
    with pytest.raises(ValueError, match="did you mean 'softmax'") as info:
        build_criterion("softmx", num_classes=3)
    assert "amsoftmax" in str(info.value) and "focal" in str(info.value)  # the choices are listed


def test_loss_specific_arguments_reach_only_their_loss():
    assert build_criterion("focal", num_classes=3, focal_gamma=0.5).gamma == 0.5
    arcface = build_criterion("arcface", num_classes=3, arc_margin=0.2, arc_scale=16)
    assert (arcface.margin, arcface.scale) == (0.2, 16)
    assert not hasattr(build_criterion("softmax", num_classes=3, focal_gamma=0.5), "gamma")


def test_bad_target_shapes_are_refused():
    criterion = build_criterion("softmax", num_classes=3)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        criterion(LOGITS, torch.ones(2, 4) / 4)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        criterion(LOGITS, TARGETS[:, None])


# --- softmax and bce ---------------------------------------------------------------------------------------------

def test_softmax_matches_hand_computation():
    loss = build_criterion("softmax", num_classes=3)(LOGITS, TARGETS)
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    row1 = -math.log(1 / (2 * math.exp(0.5) + 1))
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_softmax_with_soft_targets_and_smoothing_matches_torch():
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]])
    loss = build_criterion("softmax", num_classes=3, label_smoothing=0.1)(LOGITS, soft)
    assert float(loss) == pytest.approx(float(F.cross_entropy(LOGITS, soft, label_smoothing=0.1)), rel=1e-6)
    loss = build_criterion("softmax", num_classes=3, label_smoothing=0.1)(LOGITS, TARGETS)
    assert float(loss) == pytest.approx(float(F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.1)), rel=1e-6)


def test_bce_is_one_vs_all_summed_over_classes():
    loss = build_criterion("bce", num_classes=3)(LOGITS, TARGETS)
    sig = torch.sigmoid(LOGITS)
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    manual = -(onehot * sig.log() + (1 - onehot) * (1 - sig).log()).sum(1).mean()
    assert float(loss) == pytest.approx(float(manual), rel=1e-6)


def test_label_smoothing_raises_loss_of_confident_correct_prediction():
    confident = torch.tensor([[10.0, -10.0, -10.0]])
    plain = build_criterion("softmax", num_classes=3)(confident, torch.tensor([0]))
    smooth = build_criterion("softmax", num_classes=3, label_smoothing=0.2)(confident, torch.tensor([0]))
    assert float(smooth) > float(plain) + 1.0


# --- focal -------------------------------------------------------------------------------------------------------

def test_focal_with_gamma_zero_is_cross_entropy():
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]])
    for targets in (TARGETS, soft):
        focal = build_criterion("focal", num_classes=3, focal_gamma=0.0)(LOGITS, targets)
        assert float(focal) == pytest.approx(float(F.cross_entropy(LOGITS, targets)), rel=1e-6)


def test_focal_matches_hand_computation():
    z = [2.0, 0.0, -1.0]
    p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    logits = torch.tensor([z])
    loss = build_criterion("focal", num_classes=3, focal_gamma=2.0)(logits, torch.tensor([0]))
    assert float(loss) == pytest.approx(-(1 - p[0]) ** 2 * math.log(p[0]), rel=1e-5)
    soft = build_criterion("focal", num_classes=3, focal_gamma=2.0)(logits, torch.tensor([[0.5, 0.5, 0.0]]))
    expected = -0.5 * (1 - p[0]) ** 2 * math.log(p[0]) - 0.5 * (1 - p[1]) ** 2 * math.log(p[1])
    assert float(soft) == pytest.approx(expected, rel=1e-5)
    # the point of focal: a well-classified sample is down-weighted far more than a misclassified one
    ce = F.cross_entropy(logits, torch.tensor([0]))
    assert float(loss) < 0.1 * float(ce)


# --- class weights -----------------------------------------------------------------------------------------------

def test_class_weights_from_frequencies():
    weights = class_weights_from_targets([0, 0, 0, 1, 2, 2], ["a", "b", "c"])
    # counts 3, 1, 2 → inverse 1/3, 1, 1/2, mean 11/18
    assert weights == pytest.approx([6 / 11, 18 / 11, 9 / 11])
    assert sum(weights) / 3 == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\['c'\] have no training images"):
        class_weights_from_targets([0, 1], ["a", "b", "c"])


def test_class_weighted_softmax_and_bce():
    weights = [0.5, 1.0, 2.0]
    softmax = build_criterion("softmax", num_classes=3, class_weights=weights)(LOGITS, TARGETS)
    expected = F.cross_entropy(LOGITS, TARGETS, weight=torch.tensor(weights), reduction="none").mean()
    assert float(softmax) == pytest.approx(float(expected), rel=1e-6)
    bce = build_criterion("bce", num_classes=3, class_weights=weights)(LOGITS, TARGETS)
    onehot = F.one_hot(TARGETS, 3).float()
    per_element = F.binary_cross_entropy_with_logits(LOGITS, onehot, reduction="none") * torch.tensor(weights)
    assert float(bce) == pytest.approx(float(per_element.sum(1).mean()), rel=1e-6)


def test_read_class_weights_plain_and_csv(tmp_path):
    names = ["cat", "dog", "fox"]
    plain = tmp_path / "plain.txt"
    plain.write_text("# weights\n1.0\n2.5\n\n0.5\n")
    assert read_class_weights(plain, names) == [1.0, 2.5, 0.5]
    named = tmp_path / "named.csv"
    named.write_text("class,weight\nfox, 3\ncat,1\ndog,2\n")
    assert read_class_weights(named, names) == [1.0, 2.0, 3.0]
    assert resolve_class_weights(str(named), class_names=names, train_targets=[]) == [1.0, 2.0, 3.0]
    assert resolve_class_weights(None, class_names=names, train_targets=[0]) is None
    assert resolve_class_weights("auto", class_names=names, train_targets=[0, 1, 2]) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("content", "message"), [
    ("1\n2\n", r"has 2 weights \(last on line 2\) but the data has 3 classes"),
    ("cat,1\ndog,2\nwolf,3\n", r"line 3: unknown class 'wolf'"),
    ("cat,1\ndog,2\n", r"no weight for class\(es\) \['fox'\]"),
    ("cat,1\ncat,2\nfox,1\n", r"line 2: class 'cat' is given twice"),
    ("1\nheavy\n2\n", r"line 2: 'heavy' is not a number"),
    ("1\n-2\n2\n", r"line 2: weight -2.0 must be finite and >= 0"),
])
def test_read_class_weights_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "weights.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_class_weights(path, ["cat", "dog", "fox"])
    assert str(path) in str(info.value)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        resolve_class_weights("nope.txt", class_names=["a"], train_targets=[0])


# --- threshold ---------------------------------------------------------------------------------------------------

def test_threshold_zeroes_confident_samples():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 3.0, 0.0]])
    targets = torch.tensor([0, 0, 2])  # p_target: 0.96 (confident), 0.45, 0.04
    ce = F.cross_entropy(logits, targets, reduction="none")
    loss, grad = loss_and_grad(build_criterion("softmax", num_classes=3, loss_threshold=0.9), logits, targets)
    assert float(loss) == pytest.approx(float(ce[1:].sum() / 3), rel=1e-6)
    assert grad[0].abs().sum() == 0 and grad[1:].abs().sum(1).gt(0).all()


def test_threshold_for_bce_is_per_element():
    logits = torch.tensor([[3.0, -3.0, 0.2]])  # sigmoid 0.95, 0.047, 0.55; label 0
    loss, grad = loss_and_grad(build_criterion("bce", num_classes=3, loss_threshold=0.9), logits, torch.tensor([0]))
    # the positive (p > 0.9) and the confident negative (p < 0.1) drop out; the unsure negative stays
    assert float(loss) == pytest.approx(float(F.binary_cross_entropy_with_logits(torch.tensor(0.2), torch.tensor(0.))))
    assert grad[0, 0] == 0 and grad[0, 1] == 0 and grad[0, 2] > 0


# --- GHM ---------------------------------------------------------------------------------------------------------

def test_ghm_weights_on_a_hand_made_batch():
    ghm = GradientHarmonizer(bins=10)
    g = torch.tensor([0.05, 0.05, 0.05, 0.95])
    # 4 valid samples, 2 non-empty bins: 4 / (3 * 2) for the crowded bin, 4 / (1 * 2) for the lone one
    assert ghm(g, torch.ones(4, dtype=torch.bool)).tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    # an invalid (weight 0) sample is not counted and gets weight 0
    assert ghm(g, torch.tensor([True, True, True, False])).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0])
    # g == 1 belongs to the last bin, per element for bce-shaped input
    per_element = ghm(torch.tensor([[0.0, 1.0]]), torch.ones(1, dtype=torch.bool))
    assert per_element.flatten().tolist() == pytest.approx([1.0, 1.0])


def test_ghm_momentum_keeps_running_counts():
    ghm = GradientHarmonizer(bins=10, momentum=0.5)
    valid = torch.ones(4, dtype=torch.bool)
    ghm(torch.tensor([0.05, 0.05, 0.05, 0.95]), valid)
    assert ghm.running_counts[[0, 9]].tolist() == [3.0, 1.0]  # first sight of a bin: its count
    # a look without update (validation) leaves the counts alone
    ghm(torch.tensor([0.55, 0.55, 0.55, 0.55]), valid, update=False)
    assert ghm.running_counts[[0, 5, 9]].tolist() == [3.0, 0.0, 1.0]
    weights = ghm(torch.tensor([0.05, 0.95, 0.95, 0.95]), valid)
    # running counts 0.5 * 3 + 0.5 * 1 = 2 and 0.5 * 1 + 0.5 * 3 = 2: weights 4 / (2 * 2)
    assert ghm.running_counts[[0, 9]].tolist() == [2.0, 2.0]
    assert weights.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert "ghm.running_counts" in build_criterion("softmax", num_classes=3, ghm_bins=4).state_dict()


def test_ghm_loss_matches_hand_computation():
    # three easy samples (p_target 0.98, g 0.02) and one hard one (p_target about 0.02, g 0.98)
    logits = torch.tensor([[5.0, 0.0, 0.0]] * 3 + [[-2.0, 2.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 0])
    ce = F.cross_entropy(logits, targets, reduction="none")
    loss = build_criterion("softmax", num_classes=3, ghm_bins=10)(logits, targets)
    assert float(loss) == pytest.approx(float((ce[:3].sum() * 2 / 3 + ce[3] * 2) / 4), rel=1e-6)


def reference_ghmc(logits, targets, bins, momentum, acc_sum):
    """GHM-C for sigmoid outputs as mmdetection's GHMC writes it (edges, per-bin loop, tot / num_in_bin, / n),
    except that a bin's first moving average starts from its count (ours; mmdetection starts from 0)."""
    edges = torch.arange(bins + 1).float() / bins
    edges[-1] += 1e-6
    g = (torch.sigmoid(logits) - targets).abs()
    tot = g.numel()
    weights, n = torch.zeros_like(g), 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num_in_bin = int(inds.sum())
        if num_in_bin > 0:
            if momentum > 0:
                acc_sum[i] = num_in_bin if acc_sum[i] == 0 else momentum * acc_sum[i] + (1 - momentum) * num_in_bin
                weights[inds] = tot / acc_sum[i]
            else:
                weights[inds] = tot / num_in_bin
            n += 1
    weights = weights / max(n, 1)
    return F.binary_cross_entropy_with_logits(logits, targets, weights, reduction="sum") / tot


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghm_bce_equals_the_reference_ghmc_over_several_batches(momentum):
    """Ours sums bce over classes and averages over samples, i.e. C x the reference's mean over elements."""
    torch.manual_seed(0)
    classes, bins = 10, 10
    criterion = build_criterion("bce", num_classes=classes, ghm_bins=bins, ghm_momentum=momentum)
    acc_sum = [0.0] * bins
    for step in range(3):
        logits = (torch.randn(32, classes) * (1 + 2 * step)).requires_grad_()
        labels = torch.randint(0, classes, (32,))
        ours = criterion(logits, labels)
        ref = reference_ghmc(logits.detach(), F.one_hot(labels, classes).float(), bins, momentum, acc_sum)
        assert float(ours.detach()) == pytest.approx(classes * float(ref), rel=1e-5), f"step {step}"


def test_ghm_statistics_move_only_on_training_steps():
    criterion = build_criterion("bce", num_classes=3, ghm_bins=4, ghm_momentum=0.9)
    criterion(LOGITS, TARGETS)  # validation: logits without grad
    assert criterion.ghm.running_counts.sum() == 0
    criterion(LOGITS.clone().requires_grad_(), TARGETS)
    assert criterion.ghm.running_counts.sum() == 6  # 2 samples x 3 classes, per element for bce


# --- OHM ---------------------------------------------------------------------------------------------------------

def test_ohm_keeps_exactly_the_hardest():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    targets = torch.zeros(4, dtype=torch.long)
    ce = F.cross_entropy(logits, targets, reduction="none")  # hardest: samples 2 and 1
    loss, grad = loss_and_grad(build_criterion("softmax", num_classes=3, ohm_ratio=0.5), logits, targets)
    assert float(loss) == pytest.approx(float(ce[[1, 2]].mean()), rel=1e-6)
    assert grad[[0, 3]].abs().sum() == 0 and grad[[1, 2]].abs().sum(1).gt(0).all()
    # at least one sample; a zero-weight sample never takes a slot (k counts the weighted samples)
    loss, grad = loss_and_grad(build_criterion("softmax", num_classes=3, ohm_ratio=0.1), logits, targets)
    assert float(loss) == pytest.approx(float(ce[2]), rel=1e-6)
    weight = torch.tensor([1.0, 1.0, 0.0, 1.0])
    loss, grad = loss_and_grad(build_criterion("softmax", num_classes=3, ohm_ratio=0.7), logits, targets, weight)
    assert float(loss) == pytest.approx(float(ce[[1, 3]].mean()), rel=1e-6)  # round(0.7 * 3) = 2 of 3


# --- margin losses -----------------------------------------------------------------------------------------------

COSINES = torch.tensor([[0.5, 0.2, -0.1], [0.3, -0.4, 0.8]])


def test_amsoftmax_subtracts_the_margin_from_the_target_cosine():
    criterion = build_criterion("amsoftmax", num_classes=3, arc_margin=0.35, arc_scale=10.0)
    logits = 10.0 * COSINES
    adjusted = criterion.adjust_logits(logits, F.one_hot(TARGETS, 3).float())
    assert adjusted[0, 0] == pytest.approx(10.0 * (0.5 - 0.35), abs=1e-5)
    assert adjusted[1, 2] == pytest.approx(10.0 * (0.8 - 0.35), abs=1e-5)
    mask = F.one_hot(TARGETS, 3).bool()
    assert torch.equal(adjusted[~mask], logits[~mask])  # non-target logits untouched
    assert float(criterion(logits, TARGETS)) == pytest.approx(float(F.cross_entropy(adjusted, TARGETS)), rel=1e-6)
    # a 50/50 mix gives each of its two classes half the margin
    half = criterion.adjust_logits(logits, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    assert half[0, :2].tolist() == pytest.approx([10 * (0.5 - 0.175), 10 * (0.2 - 0.175)], abs=1e-5)


def test_arcface_adds_the_margin_to_the_target_angle():
    criterion = build_criterion("arcface", num_classes=3, arc_margin=0.5, arc_scale=10.0)
    logits = 10.0 * COSINES
    adjusted = criterion.adjust_logits(logits, F.one_hot(TARGETS, 3).float())
    assert adjusted[0, 0] == pytest.approx(10.0 * math.cos(math.acos(0.5) + 0.5), abs=1e-4)
    assert adjusted[1, 2] == pytest.approx(10.0 * math.cos(math.acos(0.8) + 0.5), abs=1e-4)
    mask = F.one_hot(TARGETS, 3).bool()
    assert torch.equal(adjusted[~mask], logits[~mask])
    assert (adjusted[mask] < logits[mask]).all()
    assert float(criterion(logits, TARGETS)) == pytest.approx(float(F.cross_entropy(adjusted, TARGETS)), rel=1e-6)


def test_arcface_target_logit_decreases_with_the_angle_everywhere():
    # past theta + m > pi the fallback cos(theta) - m sin(m) takes over, so the target logit keeps falling
    criterion = build_criterion("arcface", num_classes=2, arc_margin=0.5, arc_scale=1.0)
    cosines = torch.linspace(0.999, -0.999, 401)
    logits = torch.stack([cosines, torch.zeros_like(cosines)], dim=1)
    target = criterion.adjust_logits(logits, F.one_hot(torch.zeros(401, dtype=torch.long), 2).float())[:, 0]
    assert (target[1:] < target[:-1]).all()
    assert target[-1] == pytest.approx(-0.999 - 0.5 * math.sin(0.5), abs=1e-4)


@pytest.mark.parametrize(("criterion", "head", "expected"), [
    ("arcface", None, "cosine"), ("amsoftmax", "cosine", "cosine"), ("softmax", None, "linear"),
    ("bce", "cosine", "cosine"), ("focal", "linear", "linear"),
])
def test_resolve_head(criterion, head, expected):
    assert resolve_head(criterion, head) == expected


def test_margin_loss_refuses_a_linear_head():
    with pytest.raises(ValueError, match="needs --head cosine"):
        resolve_head("arcface", "linear")
