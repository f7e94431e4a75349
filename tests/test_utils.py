"""Shared helpers: validation, scenario masks, flat parameters, quiet learn2learn import."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from avalanche_meta.utils import (
    ActiveUnits,
    FlatParameters,
    NonFiniteLossError,
    check_choice,
    check_finite_loss,
    check_in_interval,
    check_positive,
    check_scenario,
)
from avalanche_meta.utils.scenario import MASK_VALUE


def test_check_positive_names_the_argument():
    check_positive("mem_size", 3, integer=True)
    with pytest.raises(ValueError, match="`mem_size`"):
        check_positive("mem_size", 0, integer=True)
    with pytest.raises(ValueError, match="integer"):
        check_positive("mem_size", 2.5, integer=True)
    with pytest.raises(ValueError, match="`lr`"):
        check_positive("lr", float("nan"))


def test_check_in_interval_open_and_closed_ends():
    check_in_interval("beta", 1.0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"`beta` must lie in \(0, 1\]"):
        check_in_interval("beta", 0.0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match="`gamma`"):
        check_in_interval("gamma", 1.5, 0, 1, low_open=True)


def test_check_choice():
    check_choice("variant", "alg1", ("alg1", "alg6"))
    with pytest.raises(ValueError, match="'alg1', 'alg6'"):
        check_choice("variant", "alg2", ("alg1", "alg6"))


def test_check_finite_loss_raises_on_nan_and_inf():
    assert check_finite_loss(torch.tensor(1.0), "x").item() == 1.0
    with pytest.raises(NonFiniteLossError, match="MER step 3"):
        check_finite_loss(torch.tensor(float("nan")), "MER step 3")
    with pytest.raises(NonFiniteLossError):
        check_finite_loss(torch.tensor([1.0, float("inf")]), "x")


def test_check_scenario():
    assert check_scenario("task") == "task"
    with pytest.raises(ValueError, match="Task-IL"):
        check_scenario("tasks")


def test_active_units_class_il_masks_unseen_classes():
    au = ActiveUnits(4, "class")
    logits = torch.zeros(2, 4)
    # nothing seen yet: everything active
    assert torch.equal(au.mask(logits), logits)
    au.observe(torch.tensor([0, 1]))
    out = au.mask(logits)
    assert out[:, :2].eq(0).all() and out[:, 2:].eq(MASK_VALUE).all()


def test_active_units_task_il_uses_each_samples_task():
    au = ActiveUnits(4, "task")
    au.observe(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1]))
    out = au.mask(torch.zeros(3, 4), torch.tensor([1, 0, 5]))
    assert out[0].tolist() == [MASK_VALUE, MASK_VALUE, 0, 0]
    assert out[1].tolist() == [0, 0, MASK_VALUE, MASK_VALUE]
    assert out[2].tolist() == [0, 0, 0, 0]  # unknown task: nothing known, all active
    with pytest.raises(ValueError, match="task label"):
        au.mask(torch.zeros(1, 4), None)


def test_active_units_domain_il_keeps_everything_and_checks_sizes():
    au = ActiveUnits(3, "domain")
    x = torch.randn(2, 3)
    assert torch.equal(au.mask(x), x)
    with pytest.raises(ValueError, match="3"):
        au.mask(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="outside"):
        au.observe(torch.tensor([7]))


def test_active_units_state_dict_round_trip_grows_tasks():
    au = ActiveUnits(6, "task")
    au.observe_classes([4, 5], task=2)
    fresh = ActiveUnits(6, "task")
    fresh.load_state_dict(au.state_dict())
    assert torch.equal(fresh.task_classes, au.task_classes)
    assert fresh.task_classes.shape == (3, 6)


def test_flat_parameters_are_views_and_lerp_interpolates_all():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [p.detach().clone() for p in net.parameters()]
    flat = FlatParameters(net)
    assert flat.is_bound and len(flat) == sum(p.numel() for p in before)
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)
    anchor = flat.flat.clone()
    flat.flat.add_(1.0)
    flat.flat.lerp_(anchor, 0.75)  # theta = anchor + 0.25 * (theta - anchor)
    for p, b in zip(net.parameters(), before):
        assert torch.allclose(p, b + 0.25)
    # gradients land in the flat gradient buffer
    net(torch.randn(5, 3)).sum().backward()
    assert flat.flat_grad.abs().sum() > 0
    assert flat.is_bound


def test_flat_parameters_detects_replaced_parameters():
    net = nn.Linear(2, 2)
    flat = FlatParameters(net)
    net.weight = nn.Parameter(torch.zeros(2, 2))
    assert not flat.is_bound


def test_importing_the_package_prints_nothing():
    code = (
        "import avalanche_meta, avalanche_meta.utils, avalanche_meta.models\n"
        "from avalanche_meta.utils.quiet_import import import_learn2learn\n"
        "import_learn2learn()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == "", (out.stdout, out.stderr)


def test_quiet_import_keeps_other_warnings_visible():
    code = (
        "import warnings\n"
        "from avalanche_meta.utils import quiet_import\n"
        "import gym_notices.notices as n\n"
        "before = dict(n.notices)\n"
        "quiet_import.import_learn2learn()\n"
        "assert n.notices == before, 'notices not restored'\n"
        "warnings.warn('a real warning')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "a real warning" in out.stderr
    assert "Gym has been unmaintained" not in out.stderr


def test_task_il_check_complete_minibatch_and_cast_inputs():
    from avalanche_meta.utils.scenario import (
        cast_inputs,
        check_distinct_task_labels,
        complete_minibatch,
    )

    owners = {}
    check_distinct_task_labels(owners, ("exp", 0), [0], "ER")
    check_distinct_task_labels(owners, ("exp", 0), [0], "ER")  # same experience
    check_distinct_task_labels(owners, ("exp", 1), [1], "ER")
    with pytest.raises(ValueError, match=r"ER: .*experience 2 .*used by experience 0"):
        check_distinct_task_labels(owners, ("exp", 2), [0], "ER")
    x, y = torch.rand(3, 2), torch.tensor([0, 1, 1])
    assert complete_minibatch([x, y], "class", "ER")[2].tolist() == [0, 0, 0]
    assert complete_minibatch([x, y], "domain", "ER")[2].dtype == torch.long
    with pytest.raises(ValueError, match="Task-IL.*return_task_id=True"):
        complete_minibatch([x, y], "task", "ER")
    model = nn.Linear(2, 2)
    assert cast_inputs(x.double(), model).dtype == torch.float32
    assert cast_inputs(torch.ones(2, dtype=torch.uint8), model).dtype == torch.uint8


def test_active_units_masks_without_reading_values_back():
    """``active`` works on a device where reading values back is impossible."""
    units = ActiveUnits(4, "task").to("meta")
    units._grow(2)
    t = torch.tensor([0, 1, 5], device="meta")  # task 5 never seen: every unit
    assert units.active(t, 3).shape == (3, 4)
    cls = ActiveUnits(4, "class").to("meta")
    cls.observe(torch.tensor([1], device="meta"), check=False)
    assert cls.active(None, 2).device.type == "meta"
    z, y = torch.zeros(2, 4, device="meta"), torch.tensor([0, 3], device="meta")
    assert cls.loss_logits(z, None, y).device.type == "meta"
    # and on the CPU the values are right
    units = ActiveUnits(4, "task")
    units.observe_classes([0, 1], task=0)
    rows = units.active(torch.tensor([0, 3, -1]), 3)
    assert rows.tolist() == [[True, True, False, False]] + [[True] * 4] * 2


def test_loss_guard_checks_at_once_on_cpu_and_defers_when_asked():
    """On the CPU every loss is checked when it is given; with ``every=3`` a
    non-finite loss is found at the third check (or by ``flush``), the error saying
    how late it may be; ``every`` must be a positive integer."""
    from avalanche_meta.utils.validation import LossGuard, NonFiniteLossError

    nan = torch.tensor(float("nan"))
    ok = torch.tensor(1.0)
    guard = LossGuard()
    assert guard(ok, "x") is ok
    with pytest.raises(NonFiniteLossError, match="training stopped instead"):
        guard(nan, "at once")
    late = LossGuard(every=3)
    late(nan, "deferred")  # flagged, not read yet
    late(ok, "deferred")
    with pytest.raises(NonFiniteLossError, match="a loss of the last 3 steps"):
        late(ok, "deferred")
    late(nan, "deferred")
    with pytest.raises(NonFiniteLossError, match="nan_check_every=1 checks every"):
        late.flush()
    late.flush()  # nothing pending: no error
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="nan_check_every"):
            LossGuard(every=bad)
