"""MER / ER fidelity to the original code (mattriemer/MER), and the kernel's safety.

Each test pins a behaviour of the reference (``model/meralg1.py``, ``meralg6.py``,
``meralg7.py``, ``eralg4.py``) or a safety property of the native kernel; the full
comparison with the reference itself is ``benchmarks/parity_mer.py``.
"""

import copy
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils import (
    _make_taskaware_tensor_classification_dataset as make_dataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from avalanche_meta.models.mlp import MLP
from avalanche_meta.strategies import ER, MER
from avalanche_meta.strategies import _mer_kernels as kernels
from avalanche_meta.strategies._memory import ReservoirMemory
from avalanche_meta.utils.scenario import ActiveUnits, declared_task_classes

torch.set_num_threads(1)
D, C = 6, 4


def _silent():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin()


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _two_task_benchmark(n=6, seed=0):
    """Task 0 has classes {0, 1}, task 1 classes {2, 3}; every example of task 0 is
    class 0 first (so 'labels seen so far' is a single class at the start)."""
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
    y0 = torch.tensor([0] * (n // 2) + [1] * (n - n // 2))
    y1 = y0 + 2
    ds = [
        make_dataset(x0, y0, task_labels=[0] * n),
        make_dataset(x1, y1, task_labels=[1] * n),
    ]
    return benchmark_from_datasets(train=ds, test=ds)


class _ParamsAfterEach(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.params = []

    def after_training_iteration(self, strategy, **kwargs):
        self.params.append(_params(strategy.model).clone())


def _build(method, scenario, plugin, convention="original"):
    torch.manual_seed(0)
    model = MLP(D, (8,), C)
    common = dict(
        model=model,
        lr=0.1,
        mem_size=10,
        replay_batch_size=2,
        scenario=scenario,
        num_classes=C,
        seed=0,
        convention=convention,
        plugins=[plugin],
        evaluator=_silent(),
    )
    if method == "mer":
        return MER(batches_per_example=2, beta=0.5, **common)
    return ER(**common)


# --------------------------------------------------------------------------------
# 1. declared classes are active from a task's first example
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mer", "er"])
@pytest.mark.parametrize("scenario", ["task", "class"])
def test_first_example_of_a_task_changes_the_parameters(method, scenario):
    plugin = _ParamsAfterEach()
    strategy = _build(method, scenario, plugin)
    before = _params(strategy.model).clone()
    bm = _two_task_benchmark()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(bm.train_stream[0], shuffle=False)
    # with only the labels seen so far active, the first example (class 0, alone
    # in its batch) had one active unit: loss 0, no change at all
    assert (plugin.params[0] - before).abs().max() > 1e-6
    # task 1's first example: Task-IL would have one active unit (class 2) for it
    n0 = len(plugin.params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(bm.train_stream[1], shuffle=False)
    if scenario == "task":
        active = strategy.active_units.active(torch.tensor([1]), 1)[0]
        assert active.tolist() == [False, False, True, True]
    assert (plugin.params[n0] - plugin.params[n0 - 1]).abs().max() > 1e-6


def test_online_sub_experiences_declare_their_origin_classes():
    from avalanche.benchmarks.scenarios.online import split_online_stream

    from avalanche_meta.benchmarks.online import online_stream

    bm = _two_task_benchmark()
    exp = bm.train_stream[0]
    for stream in (
        online_stream([exp], batch_size=1, shuffle=False),
        split_online_stream([exp], 1, shuffle=False),  # boundaries hidden
    ):
        first = next(iter(stream))
        assert declared_task_classes(first) == {0: [0, 1]}
    units = ActiveUnits(C, "task")
    assert units.observe_experience(bm.train_stream[1]) == {1: [2, 3]}
    assert units.active(torch.tensor([1]), 1)[0].tolist() == [0, 0, 1, 1]
    mixed = make_dataset(
        torch.zeros(4, D), torch.tensor([0, 1, 2, 3]), task_labels=[0, 0, 1, 1]
    )
    mixed_exp = benchmark_from_datasets(train=[mixed], test=[mixed]).train_stream[0]
    assert declared_task_classes(mixed_exp) == {0: [0, 1], 1: [2, 3]}


# --------------------------------------------------------------------------------
# 2. k memories + the current example; reservoir randint(0, age)
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("convention,per_batch", [("original", 6), ("paper", 5)])
def test_single_sample_steps_per_example(convention, per_batch):
    s, k = 3, 5
    strategy = MER(
        model=MLP(D, (8,), C),
        mem_size=10,
        replay_batch_size=k,
        batches_per_example=s,
        convention=convention,
        num_classes=C,
        seed=0,
        evaluator=_silent(),
    )
    counts = []
    sgd_steps = strategy.sgd_steps

    def counting(x, *args):
        counts[-1] += x.shape[0]
        return sgd_steps(x, *args)

    strategy.sgd_steps = counting
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        x, y = torch.randn(1, D, generator=g), torch.randint(0, C, (1,), generator=g)
        counts.append(0)
        strategy.learn_example(x, y, torch.zeros(1, dtype=torch.long))
        strategy.memory.add(x[0], y[0], 0)
    assert counts[0] == s  # the first example is learned alone
    assert counts[-1] == s * per_batch  # original: s * (k + 1) = 18
    assert strategy.memories_per_batch == per_batch - 1


def test_original_reservoir_draw_keeps_new_examples_with_mem_over_age_plus_one():
    kept = {True: 0, False: 0}
    trials = 1500
    for original in (True, False):
        for seed in range(trials):
            memory = ReservoirMemory(1, seed=seed, original_draw=original)
            memory.add(torch.zeros(1), 0)
            kept[original] += memory.add(torch.ones(1), 1) >= 0
    # example 2 of a 1-slot memory: kept with 1/3 (randint(0, 2)) vs 1/2
    assert abs(kept[True] / trials - 1 / 3) < 0.05
    assert abs(kept[False] / trials - 1 / 2) < 0.05


# --------------------------------------------------------------------------------
# 3. ER = eralg4.py: k memories then the current example, one SGD step on the mean
# --------------------------------------------------------------------------------
def test_er_original_is_one_step_on_k_memories_plus_current():
    torch.manual_seed(3)
    model = MLP(D, (8,), C)
    er = ER(
        model=copy.deepcopy(model),
        lr=0.1,
        mem_size=4,
        replay_batch_size=3,
        convention="original",
        num_classes=C,
        seed=7,
        evaluator=_silent(),
    )
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, D, generator=g), torch.randint(0, C, (9,), generator=g)
    t = torch.zeros(9, dtype=torch.long)
    ref = copy.deepcopy(model)
    memory = ReservoirMemory(4, seed=7, original_draw=True)
    batch_sizes = []
    learn = er.learn_example

    def spy(xi, yi, ti):
        batch_sizes.append(1 + min(3, len(er.memory)))
        return learn(xi, yi, ti)

    er.learn_example = spy
    for i in range(9):
        er.active_units.observe(y[i : i + 1], t[i : i + 1])
        er.learn_example(x[i : i + 1], y[i : i + 1], t[i : i + 1])
        er.memory.add(x[i], y[i], t[i])
        xb, yb = x[i : i + 1], y[i : i + 1]
        if len(memory):
            mx, my, _ = memory.sample(1, min(3, len(memory)))
            xb, yb = torch.cat([mx[0], xb]), torch.cat([my[0], yb])
        ref.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
        memory.add(x[i], y[i], t[i])
    assert batch_sizes[-1] == 4  # 3 memories + the current example
    torch.testing.assert_close(_params(er.model), _params(ref))
    assert torch.equal(er.memory.x, memory.x)


# --------------------------------------------------------------------------------
# 4. Algorithms 6 and 7 as in the code
# --------------------------------------------------------------------------------
def test_alg7_original_learns_nothing_from_the_first_example():
    model = MLP(D, (8,), C)
    strategy = MER(
        model=model,
        variant="alg7",
        convention="original",
        mem_size=5,
        replay_batch_size=2,
        batches_per_example=3,
        num_classes=C,
        seed=0,
        evaluator=_silent(),
    )
    before = _params(model).clone()
    x, y, t = torch.randn(1, D), torch.tensor([1]), torch.zeros(1, dtype=torch.long)
    strategy.learn_example(x, y, t)
    assert torch.equal(_params(model), before)
    strategy.memory.add(x[0], y[0], t[0])
    strategy.learn_example(torch.randn(1, D), torch.tensor([2]), t)
    assert not torch.equal(_params(model), before)


def test_alg7_original_puts_the_current_example_at_every_position():
    strategy = MER(
        model=MLP(D, (8,), C),
        variant="alg7",
        convention="original",
        mem_size=5,
        replay_batch_size=3,
        num_classes=C,
        seed=0,
        evaluator=_silent(),
    )
    for i in range(5):
        strategy.memory.add(torch.full((D,), float(i)), i % C, 0)
    seen = set()
    x = torch.full((1, D), -1.0)
    for _ in range(60):
        xb, yb, tb, pos = strategy.replay_batch(
            x[0], torch.tensor(0), torch.tensor(0), 1, "random"
        )
        assert xb.shape[1] == 4 and float(xb[0, pos[0], 0]) == -1.0
        assert int((xb[0, :, 0] == -1.0).sum()) == 1
        seen.add(pos[0])
    assert seen == {0, 1, 2, 3}


def test_alg6_original_interpolates_after_every_batch():
    """s batches, each followed by Reptile with gamma (meralg6.py), differs from one
    Reptile step over the s batches (the paper's box)."""
    torch.manual_seed(2)
    model = MLP(D, (8,), C)
    x, y, t = torch.randn(1, D), torch.tensor([1]), torch.zeros(1, dtype=torch.long)
    runs = {}
    for convention in ("original", "paper"):
        strategy = MER(
            model=copy.deepcopy(model),
            variant="alg6",
            convention=convention,
            lr=0.2,
            gamma=0.3,
            mem_size=3,
            replay_batch_size=1,  # original: 1 memory + current; paper: current only
            batches_per_example=3,
            num_classes=C,
            seed=0,
            evaluator=_silent(),
        )
        strategy.learn_example(x, y, t)  # empty memory: both batches = [current]
        runs[convention] = _params(strategy.model)
    # one sample, three batches: original = 3 x (step, then keep 0.3 of it)
    ref = copy.deepcopy(model)
    for _ in range(3):
        before = copy.deepcopy(ref.state_dict())
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.copy_(before[name] + 0.3 * (-0.2 * p.grad))
    torch.testing.assert_close(runs["original"], _params(ref))
    assert (runs["original"] - runs["paper"]).abs().max() > 1e-4


# --------------------------------------------------------------------------------
# 5. kernel safety, loader, switches, errors
# --------------------------------------------------------------------------------
needs_native = pytest.mark.skipif(
    kernels.native_library() is None, reason="no C compiler / native kernel"
)


@needs_native
def test_kernel_rejects_labels_outside_the_output_width_before_writing():
    model = MLP(D, (8,), C)
    layers = [
        (m.weight.detach(), m.bias.detach()) for m in kernels.mlp_linear_layers(model)
    ]
    steps = kernels.NativeMLPSteps(layers)
    canary = steps.work.clone()
    before = _params(model).clone()
    X = torch.randn(3, D)
    for bad in (C, C + 100, -1):
        y = torch.tensor([0, bad, 1])
        with pytest.raises(ValueError, match="outside the model's 4 output units"):
            steps(X, y, None, torch.ones(3), 0.1, -1e9)
        assert torch.equal(_params(model), before)
        assert torch.equal(steps.work, canary)  # nothing written, not even scratch
    assert steps(X, torch.tensor([0, 3, 1]), None, torch.ones(3), 0.1, -1e9) == -1
    assert not torch.equal(_params(model), before)


@pytest.mark.parametrize("fast_path", [True, False])
def test_label_beyond_the_model_width_is_a_clear_error(fast_path):
    """num_classes larger than the model's output: refused, nothing changed."""
    model = MLP(D, (8,), C)
    strategy = MER(
        model=model,
        num_classes=C + 2,
        scenario="class",
        mem_size=4,
        replay_batch_size=2,
        fast_path=fast_path,
        seed=0,
        evaluator=_silent(),
    )
    before = _params(model).clone()
    ds = make_dataset(torch.randn(2, D), torch.tensor([C + 1, 0]), task_labels=[0, 0])
    exp = benchmark_from_datasets(train=[ds], test=[ds]).train_stream[0]
    with pytest.raises(ValueError, match="outputs but `num_classes`"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy.train(exp, shuffle=False)
    assert torch.equal(_params(model), before)
    assert len(strategy.memory) == 0


@needs_native
def test_corrupt_cached_kernel_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALANCHE_META_CACHE", str(tmp_path))
    path = kernels.kernel_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a shared library")
    kernels.reset_native_library()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "could not be built" fallback
            assert kernels.native_library() is not None
        assert path.read_bytes()[:4] == b"\x7fELF"
    finally:
        kernels.reset_native_library()


@pytest.mark.parametrize(
    "value,disabled",
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("0", False),
        ("false", False),
        ("", False),
    ],
)
def test_no_native_switch_values(monkeypatch, value, disabled):
    monkeypatch.setenv("AVALANCHE_META_NO_NATIVE", value)
    assert kernels.native_disabled() is disabled


@needs_native
def test_concurrent_first_use_gives_every_strategy_the_same_inner_loop(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("AVALANCHE_META_CACHE", str(tmp_path))  # forces a slow build
    kernels.reset_native_library()
    got = []
    try:
        threads = [
            threading.Thread(target=lambda: got.append(kernels.native_library()))
            for _ in range(3)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(got) == 3 and all(g is not None for g in got)
        assert all(g is got[0] for g in got)
    finally:
        kernels.reset_native_library()


def test_replay_batch_larger_than_memory_and_criteria():
    model = MLP(D, (8,), C)
    with pytest.raises(ValueError, match="replay_batch_size.*mem_size"):
        MER(model=model, mem_size=4, replay_batch_size=5, convention="original")
    with pytest.raises(ValueError, match="replay_batch_size.*mem_size"):
        ER(model=model, mem_size=4, replay_batch_size=6)  # paper: 5 memories
    ER(model=model, mem_size=4, replay_batch_size=5, evaluator=_silent())  # 4: fine
    MER(model=model, criterion=nn.CrossEntropyLoss(), evaluator=_silent())
    with pytest.raises(ValueError, match="label_smoothing"):
        MER(model=model, criterion=nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(ValueError, match="reduction='sum'"):
        ER(model=model, criterion=nn.CrossEntropyLoss(reduction="sum"))
    with pytest.raises(ValueError, match="weight"):
        ER(model=model, criterion=nn.CrossEntropyLoss(weight=torch.ones(C)))
    with pytest.raises(ValueError, match="MSELoss"):
        MER(model=model, criterion=nn.MSELoss())
    with pytest.raises(ValueError, match="convention"):
        MER(model=model, convention="code")


def test_cli_presets_follow_the_original_code():
    from avalanche_meta.cli.methods.mer import ER_PRESETS, MER_PRESETS

    # mer_examples.sh: eralg4 --lr 0.1 and its own --replay_batch_size
    expected_er_k = {
        "rotations-5120": 25,
        "rotations-500": 5,
        "rotations-200": 10,
        "permutations-5120": 25,
        "permutations-500": 10,
        "permutations-200": 10,
        "many-5120": 25,
        "many-500": 25,
    }
    assert {n: p["replay_batch_size"] for n, p in ER_PRESETS.items()} == expected_er_k
    assert all(
        p["lr"] == 0.1 and p["convention"] == "original" for p in ER_PRESETS.values()
    )
    assert all(p["convention"] == "original" for p in MER_PRESETS.values())
    assert MER_PRESETS["rotations-200"]["replay_batch_size"] == 10  # k memories
    assert MER_PRESETS["alg6-permutations-500"]["gamma"] == 0.3
    assert MER_PRESETS["alg6-permutations-500"]["batches_per_example"] == 1
    assert MER_PRESETS["alg7-permutations-200"]["batches_per_example"] == 2
