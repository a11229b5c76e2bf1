import io
import logging
import math

import pytest
import torch

from optim import SCHEDULES, build_optimizer, build_scheduler, warmup_step_lambda
from utils.logger import get_logger


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


def test_unknown_schedule_is_clear():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", lr=0.1)
    with pytest.raises(ValueError, match="cosine"):
        build_scheduler(opt, "cosin", epochs=3, warmup=0, steps_per_epoch=1)


# ---- short runs: a warmup as long as the run is clipped, and the step rule always reaches the full lr -------------
def seed_rule(epoch: int, epochs: int, warmup: int) -> float:
    """The main seed's warmup-step rule exactly as it was, boundaries truncated with int()."""
    rest = epochs - warmup
    boundaries = [warmup, warmup + int(1.5 * rest / 4), warmup + int(2.5 * rest / 4), warmup + int(3.5 * rest / 4)]
    return [0.1, 1.0, 0.1, 0.01, 0.001][sum(epoch >= b for b in boundaries)]


@pytest.fixture
def warnings_logged(caplog):
    logger = get_logger()
    logger.addHandler(caplog.handler)  # the project logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def test_step_rule_keeps_the_seed_factors_from_three_epochs_after_warmup():
    runs = [(epochs, warmup) for epochs in range(3, 101) for warmup in range(0, 6) if epochs - warmup >= 3]
    for epochs, warmup in runs + [(10, 1), (48, 1), (100, 5)]:
        got = [warmup_step_lambda(e, epochs=epochs, warmup=warmup) for e in range(epochs)]
        assert got == [seed_rule(e, epochs, warmup) for e in range(epochs)], (epochs, warmup)
    assert [seed_rule(e, 10, 1) for e in range(10)] == [0.1, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


@pytest.mark.parametrize("epochs,warmup,factors,warned", [
    (1, 1, [1.0], ["--warmup 1 is not shorter than --epochs 1", "lr factor per epoch is [1.0]"]),
    (1, 0, [1.0], ["lr factor per epoch is [1.0]"]),  # the seed's rule ran this epoch at 0.001
    (2, 0, [1.0, 0.001], ["[1.0, 0.001]"]),  # the seed's: [0.1, 0.001]
    (2, 1, [0.1, 1.0], ["--warmup 1 is half or more of --epochs 2", "[0.1, 1.0]"]),  # the seed's: [0.1, 0.001]
    (2, 5, [0.1, 1.0], ["warming up for 1 epochs instead", "half or more"]),
    (3, 0, [1.0, 0.01, 0.001], ["[1.0, 0.01, 0.001]"]),  # the seed's unchanged, but a stage is skipped
    (3, 1, [0.1, 1.0, 0.001], ["[0.1, 1.0, 0.001]"]),  # the seed's never reached the full lr: [0.1, 0.1, 0.001]
])
def test_short_step_runs_reach_the_full_lr_and_warn(warnings_logged, epochs, warmup, factors, warned):
    lrs = _lrs("step", epochs=epochs, warmup=warmup, steps=2)
    assert lrs[::2] == pytest.approx(factors) and lrs[1::2] == pytest.approx(factors)
    assert all(text in warnings_logged.text for text in warned), warnings_logged.text


def test_long_enough_runs_do_not_warn(warnings_logged):
    for name in ("step", "cosine"):
        _lrs(name, epochs=4, warmup=0, steps=1)
        _lrs(name, epochs=10, warmup=1, steps=1)
    assert warnings_logged.text == ""


@pytest.mark.parametrize("name", ["step", "cosine", "sgdr", "plateau"])
def test_one_epoch_run_with_the_default_warmup_starts_at_the_full_lr(warnings_logged, name):
    lrs = _lrs(name, epochs=1, warmup=1, steps=4)
    assert lrs[0] == pytest.approx(1.0) and "--warmup 1 is not shorter than --epochs 1" in warnings_logged.text


def test_unknown_optimizer_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'adamw'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adamww", lr=0.1)


# ---- every registered schedule: values at known steps ------------------------------------------------------------
# One run shape for all: 10 epochs of 4 steps, 2 warmup epochs (steps 0-7), so the schedule proper starts at step 8.
RUN = dict(epochs=10, warmup=2, steps=4)
KNOWN = {
    "step": ({}, {0: 0.1, 7: 0.1, 8: 1.0, 19: 1.0, 20: 0.1, 28: 0.01, 36: 0.001, 39: 0.001}),
    "cosine": ({}, {0: 0.1, 4: 0.55, 8: 1.0, 24: 0.5, 39: 0.5 * (1 + math.cos(math.pi * 31 / 32))}),
    # cycles of 2, 4, 8 epochs (8, 16, 32 steps) after warmup, peaks 1, 0.5, 0.25: restarts at steps 16 and 32
    "sgdr": ({"restart_epochs": 2, "restart_mult": 2.0, "restart_decay": 0.5},
             {0: 0.1, 8: 1.0, 12: 0.5, 15: 0.5 * (1 + math.cos(math.pi * 7 / 8)), 16: 0.5, 24: 0.25, 32: 0.25,
              39: 0.25 * 0.5 * (1 + math.cos(math.pi * 7 / 32))}),
    # rise 1/25 -> 1 over the 8 warmup steps, then cosine to 1e-4 over the 32 others
    "onecycle": ({}, {0: 0.04, 4: 0.52, 8: 1.0, 24: 1e-4 + (1 - 1e-4) * 0.5,
                      39: 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 31 / 32))}),
    "multistep": ({"milestones": [4, 7], "gamma": 0.1}, {0: 0.1, 4: 0.55, 8: 1.0, 15: 1.0, 16: 0.1, 27: 0.1,
                                                          28: 0.01, 39: 0.01}),
    "plateau": ({"plateau_patience": 1, "gamma": 0.5}, {0: 0.1, 4: 0.55, 8: 1.0, 39: 1.0}),  # no val loss given
}


def make(name: str, lrs: tuple[float, ...] = (1.0,), **options):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = build_optimizer([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], "sgd", lr=1.0, momentum=0.0)
    sched = build_scheduler(opt, name, epochs=RUN["epochs"], warmup=RUN["warmup"], steps_per_epoch=RUN["steps"],
                            **options)
    return opt, sched


def lr_trace(name: str, val_losses: list[float] | None = None, **options) -> list[float]:
    """lr used at every step of the run; ``val_losses[e]`` is reported after epoch e."""
    opt, sched = make(name, **options)
    trace = []
    for step in range(RUN["epochs"] * RUN["steps"]):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if val_losses and (step + 1) % RUN["steps"] == 0:
            sched.end_epoch(val_losses[step // RUN["steps"]])
    return trace


def test_every_registered_schedule_has_known_values():
    assert set(KNOWN) == set(SCHEDULES), "add the new schedule's values at known steps to KNOWN"


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_schedule_values_at_known_steps(name):
    options, expected = KNOWN[name]
    trace = lr_trace(name, **options)
    assert {step: trace[step] for step in expected} == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_warmup_is_linear_up_to_the_full_lr(name):
    options, _ = KNOWN[name]
    warmup = lr_trace(name, **options)[:RUN["warmup"] * RUN["steps"] + 1]
    if name == "step":  # the seed's rule: a constant 0.1, kept exactly
        assert warmup[:-1] == [0.1] * 8 and warmup[-1] == 1.0
        return
    increments = [b - a for a, b in zip(warmup, warmup[1:])]
    assert increments == pytest.approx([increments[0]] * 8) and increments[0] > 0
    assert warmup[-1] == pytest.approx(1.0)


def test_sgdr_restarts_at_cycle_boundaries():
    trace = lr_trace("sgdr", restart_epochs=2, restart_mult=2.0)
    restarts = [step for step in range(9, len(trace)) if trace[step] > trace[step - 1]]
    assert restarts == [16, 32]
    assert trace[16] == trace[32] == pytest.approx(1.0)  # restart_decay 1: every cycle peaks at the full lr
    assert trace[15] < 0.04 and trace[31] < 0.01


def test_multistep_drops_at_milestones_only():
    trace = lr_trace("multistep", milestones=[3, 6, 8], gamma=0.5)
    drops = [step for step in range(1, len(trace)) if trace[step] < trace[step - 1]]
    assert drops == [12, 24, 32]
    assert trace[-1] == pytest.approx(0.125)


def test_plateau_reduces_after_patience_and_applies_at_once():
    opt, sched = make("plateau", plateau_patience=2, gamma=0.1)
    for _ in range(RUN["warmup"] * RUN["steps"]):
        sched.step()
    lrs = []
    # epoch losses: improve, improve, then 0.89995 is within the 1e-4 relative threshold, so it counts as no
    # improvement: bad epochs 1, 2, 3 > patience 2 -> drop after the 5th epoch; then 2 more bad + 1 -> drop again
    for loss in [1.0, 0.9, 0.89995, 0.95, 0.95, 0.95, 0.95, 0.95]:
        sched.end_epoch(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01])


def test_plateau_validates_its_options():
    with pytest.raises(ValueError, match="--gamma"):
        make("plateau", gamma=1.5)


# epoch losses that make plateau (patience 1) drop twice, once on each side of the split below
VAL_LOSSES = [2.0, 1.5, 1.6, 1.6, 1.4, 1.45, 1.45, 1.45, 1.3, 1.3]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_resume_through_weights_only_checkpoint_is_exact(name):
    options, _ = KNOWN[name]
    full = lr_trace(name, VAL_LOSSES, **options)
    opt, sched = make(name, **options)
    trace = []
    split = 5 * RUN["steps"]
    for step in range(split):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if (step + 1) % RUN["steps"] == 0:
            sched.end_epoch(VAL_LOSSES[step // RUN["steps"]])
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt, sched = make(name, **options)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    for step in range(split, RUN["epochs"] * RUN["steps"]):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if (step + 1) % RUN["steps"] == 0:
            sched.end_epoch(VAL_LOSSES[step // RUN["steps"]])
    assert trace == full
    if name == "plateau":
        # patience 1, gamma 0.5: drops after epochs 3 and 6, on each side of the split
        assert [trace[e * RUN["steps"]] for e in (3, 4, 6, 7)] == [1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_every_param_group_follows_the_schedule(name):
    options, _ = KNOWN[name]
    opt, sched = make(name, lrs=(1.0, 0.1), **options)
    for _ in range(RUN["epochs"] * RUN["steps"] - 1):
        opt.step()
        sched.step()
        head, backbone = (group["lr"] for group in opt.param_groups)
        assert backbone == pytest.approx(0.1 * head)


def test_checkpoint_of_the_earlier_lambdalr_scheduler_still_loads():
    opt, sched = make("cosine")
    sched.load_state_dict({"last_epoch": 4, "base_lrs": [0.5], "_step_count": 5, "verbose": False,
                           "_get_lr_called_within_step": False, "_last_lr": [0.275], "lr_lambdas": [None]})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.55)
    assert opt.param_groups[0]["initial_lr"] == 0.5


@pytest.mark.parametrize("options,match", [
    ({}, "needs --milestones"),
    ({"milestones": [5, 3]}, "increasing"),
    ({"milestones": [1, 4]}, "--warmup 2"),
    ({"milestones": [4, 10]}, "--epochs 10"),
])
def test_multistep_milestones_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        make("multistep", **options)


def test_sgdr_options_are_checked():
    with pytest.raises(ValueError, match="--restart_mult"):
        make("sgdr", restart_mult=0.5)


def test_onecycle_without_warmup_rises_over_30_percent():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], "sgd", lr=1.0, momentum=0.0)
    sched = build_scheduler(opt, "onecycle", epochs=10, warmup=0, steps_per_epoch=10)
    trace = []
    for _ in range(100):
        trace.append(opt.param_groups[0]["lr"])
        sched.step()
    assert trace[0] == pytest.approx(0.04) and max(trace) == trace[30] == pytest.approx(1.0)
    assert trace[15] == pytest.approx(0.04 + 0.96 * 0.5)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # after the last step


def test_min_lr_is_where_cosine_and_every_sgdr_cycle_end():
    trace = lr_trace("cosine", min_lr=0.01)
    assert trace[8] == pytest.approx(1.0) and trace[24] == pytest.approx(0.01 + 0.99 * 0.5)
    assert min(trace[8:]) > 0.01 and trace[39] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 31 / 32)))
    sgdr = lr_trace("sgdr", restart_epochs=2, restart_mult=2.0, restart_decay=0.5, min_lr=0.01)
    assert sgdr[12] == pytest.approx(0.01 + 0.99 * 0.5) and sgdr[16] == pytest.approx(0.5)
    assert sgdr[24] == pytest.approx(0.01 + 0.49 * 0.5)  # the middle of the second cycle: floor + half its range
    assert lr_trace("cosine") != trace  # without --min_lr it still ends near 0
    opt, sched = make("cosine", lrs=(1.0, 0.1), min_lr=0.01)  # the backbone's floor is the same fraction of its lr
    for _ in range(39):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="--min_lr 2 must lie in"):
        make("cosine", min_lr=2.0)


def test_lr_steps_give_each_multistep_stage_its_own_lr():
    trace = lr_trace("multistep", milestones=[4, 7, 9], lr_steps=[0.5, 0.1, 0.01, 0.001])
    assert [trace[e * RUN["steps"]] for e in (2, 3, 4, 6, 7, 8, 9)] == pytest.approx(
        [0.5, 0.5, 0.1, 0.1, 0.01, 0.01, 0.001])
    assert trace[0] == pytest.approx(0.05) and trace[4] == pytest.approx(0.275)  # the warmup ramps towards 0.5
    with pytest.raises(ValueError, match="give one more lr than milestones"):
        make("multistep", milestones=[4, 7], lr_steps=[0.5, 0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="must all be > 0"):
        make("multistep", milestones=[4], lr_steps=[0.5, 0.0])
