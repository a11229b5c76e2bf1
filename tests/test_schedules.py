import math

import pytest
import torch

from optim import SCHEDULES, build_optimizer, build_scheduler, warmup_step_lambda


def expected_seed_table(epochs: int, warmup: int) -> list[float]:
    """The main seed's table written out by hand for one (epochs, warmup) pair: 100 epochs, 5 warmup."""
    assert (epochs, warmup) == (100, 5)
    # rest = 95: int(1.5*95/4)=35, int(2.5*95/4)=59, int(3.5*95/4)=83
    return [0.1] * 5 + [1.0] * 35 + [0.1] * 24 + [0.01] * 24 + [0.001] * 12


def test_warmup_step_lambda_matches_seed_table():
    table = [warmup_step_lambda(e, epochs=100, warmup=5) for e in range(100)]
    assert table == expected_seed_table(100, 5)


@pytest.mark.parametrize("epochs,warmup,expected", [
    (4, 0, [1.0, 0.1, 0.01, 0.001]),
    (10, 2, [0.1, 0.1, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001]),
])
def test_warmup_step_lambda_small_runs(epochs, warmup, expected):
    assert [warmup_step_lambda(e, epochs=epochs, warmup=warmup) for e in range(epochs)] == expected


def _lrs(name: str, epochs: int, warmup: int, steps: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], "sgd", lr=1.0, momentum=0.0)
    sched = build_scheduler(opt, name, epochs=epochs, warmup=warmup, steps_per_epoch=steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_schedule_is_stepped_per_iteration_but_constant_within_an_epoch():
    lrs = _lrs("step", epochs=10, warmup=2, steps=3)
    per_epoch = [lrs[i * 3:(i + 1) * 3] for i in range(10)]
    assert all(len(set(e)) == 1 for e in per_epoch)
    assert [e[0] for e in per_epoch] == pytest.approx([0.1, 0.1, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_cosine_warms_up_linearly_then_decays_to_zero():
    lrs = _lrs("cosine", epochs=10, warmup=2, steps=5)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 5 / 10)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[10 + 20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_every_registered_schedule_is_covered():
    assert set(SCHEDULES) == {"step", "cosine"}, "add the new schedule to the tests above"


def test_unknown_schedule_and_bad_warmup_are_clear():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", lr=0.1)
    with pytest.raises(ValueError, match="cosine"):
        build_scheduler(opt, "cosin", epochs=3, warmup=0, steps_per_epoch=1)
    with pytest.raises(ValueError, match="--warmup"):
        build_scheduler(opt, "step", epochs=3, warmup=3, steps_per_epoch=1)


def test_unknown_optimizer_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'adamw'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adamww", lr=0.1)
