import math

import pytest
import torch

from criterions import CRITERIONS, build_criterion

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
TARGETS = torch.tensor([0, 2])


def test_softmax_matches_hand_computation():
    loss = build_criterion("softmax", num_classes=3)(LOGITS, TARGETS)
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    row1 = -math.log(1 / (2 * math.exp(0.5) + 1))
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_bce_is_one_vs_all_summed_over_classes():
    loss = build_criterion("bce", num_classes=3)(LOGITS, TARGETS)
    sig = torch.sigmoid(LOGITS)
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    manual = -(onehot * sig.log() + (1 - onehot) * (1 - sig).log()).sum(1).mean()
    assert float(loss) == pytest.approx(float(manual), rel=1e-6)


@pytest.mark.parametrize("name", list(CRITERIONS))
def test_per_sample_weights_reach_the_loss(name):
    criterion = build_criterion(name, num_classes=3, label_smoothing=0.1)
    only_first = criterion(LOGITS, TARGETS, weight=torch.tensor([1.0, 0.0]))
    assert float(only_first) == pytest.approx(float(criterion(LOGITS[:1], TARGETS[:1])), rel=1e-6)
    logits = LOGITS.clone().requires_grad_()
    criterion(logits, TARGETS, weight=torch.tensor([1.0, 0.0])).backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_label_smoothing_raises_loss_of_confident_correct_prediction():
    confident = torch.tensor([[10.0, -10.0, -10.0]])
    plain = build_criterion("softmax", num_classes=3)(confident, torch.tensor([0]))
    smooth = build_criterion("softmax", num_classes=3, label_smoothing=0.2)(confident, torch.tensor([0]))
    assert float(smooth) > float(plain) + 1.0


def test_registry_coverage_and_unknown_name():
    assert set(CRITERIONS) == {"softmax", "bce"}, "add tests for the new loss above"
    with pytest.raises(ValueError, match="did you mean 'softmax'"):
        build_criterion("softmx", num_classes=3)
