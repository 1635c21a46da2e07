"""The mean teacher's EMA and the learning-rate schedule, as DAFormer/Mean Teacher define them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cicld.training.schedules import ema_update, learning_rate_factor


def _pair() -> tuple[nn.Module, nn.Module]:
    """A student and its EMA copy: a linear layer and a BatchNorm (parameters and buffers)."""
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    teacher = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    for module in (student, teacher):
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    for parameter in student.parameters():
        parameter.fill_(1.0)
    for parameter in teacher.parameters():
        parameter.fill_(0.0)
    student[1].running_mean.fill_(5.0)
    student[1].num_batches_tracked.fill_(7)
    return student, teacher


@pytest.mark.parametrize(("step", "alpha"), [(0, 0.0), (1, 0.5), (3, 0.75), (99, 0.99), (10_000, 0.99)])
def test_the_ema_weight_is_one_minus_one_over_the_step_count_capped_at_the_maximum(step, alpha):
    student, teacher = _pair()
    ema_update(teacher, student, step, max_alpha=0.99)
    # teacher = α·0 + (1 − α)·1 for every parameter
    for parameter in teacher.parameters():
        assert torch.allclose(parameter, torch.full_like(parameter, 1.0 - alpha))


def test_the_ema_copies_buffers_rather_than_averaging_them():
    student, teacher = _pair()
    ema_update(teacher, student, step=50, max_alpha=0.99)
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 5.0))
    assert teacher[1].num_batches_tracked.item() == 7


def test_the_ema_leaves_the_student_alone():
    student, teacher = _pair()
    ema_update(teacher, student, step=5, max_alpha=0.99)
    assert all(torch.equal(p, torch.ones_like(p)) for p in student.parameters())


def test_the_learning_rate_warms_up_linearly_to_one_then_decays_polynomially_to_zero():
    warmup, total = 10, 110
    factors = [learning_rate_factor(step, warmup, total, power=1.0) for step in range(total + 1)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup - 1] == 1.0 and factors[warmup] == 1.0  # the peak, reached at the end of the warm-up
    assert factors[60] == pytest.approx(0.5)  # halfway through the decay
    assert factors[total] == 0.0
    decay = factors[warmup:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_the_decay_power_bends_the_curve_and_the_factor_never_goes_below_zero():
    assert learning_rate_factor(60, 10, 110, power=2.0) == pytest.approx(0.25)
    assert learning_rate_factor(60, 10, 110, power=0.5) == pytest.approx(0.5**0.5)
    assert learning_rate_factor(500, 10, 110, power=1.0) == 0.0  # past the end (a resumed longer run)


def test_without_warm_up_the_schedule_starts_at_the_full_rate():
    assert learning_rate_factor(0, 0, 100, power=1.0) == 1.0
