"""MER and ER: equal to a straightforward Algorithm 1/6/7, scenarios, resume, errors."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import (
    _make_taskaware_tensor_classification_dataset as make_dataset,
)
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin
from torch import nn

from avalanche_meta.models.mlp import MLP, MultiHeadMLP
from avalanche_meta.strategies import ER, MER
from avalanche_meta.strategies._memory import ReservoirMemory
from avalanche_meta.utils.scenario import MASK_VALUE, ActiveUnits
from avalanche_meta.utils.validation import NonFiniteLossError

torch.set_num_threads(1)
D, C = 6, 4


def _silent():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin()


def _stream(n=7, seed=0, n_tasks=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    t = torch.randint(0, n_tasks, (n,), generator=g)
    return x, y, t


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _run_strategy(strategy, x, y, t):
    """Feed examples one by one, as ``training_epoch`` does."""
    if strategy.active_units is None:
        strategy._make_active_units(C)
    for i in range(x.shape[0]):
        xi, yi, ti = x[i : i + 1], y[i : i + 1], t[i : i + 1]
        strategy.active_units.observe(yi, ti)
        strategy.learn_example(xi, yi, ti)
        strategy.memory.add(x[i], y[i], t[i])


def _reference(
    model,
    x,
    y,
    t,
    *,
    lr,
    k,
    s,
    beta,
    gamma,
    variant,
    mem_size,
    seed,
    scenario="domain",
    convention="paper",
):
    """Algorithm 1 (6, 7) written plainly: deepcopy snapshots, one sample at a time.

    ``convention="original"`` follows the original code (meralg1/6/7.py): k memories
    plus the current example; Algorithm 6 interpolates with gamma after every batch;
    Algorithm 7 puts the current example at a random position and skips the
    stream's first example; reservoir slot drawn from 0..age inclusive.
    """
    original = convention == "original"
    model = copy.deepcopy(model)
    memory = ReservoirMemory(mem_size, seed=seed, original_draw=original)
    units = ActiveUnits(C, scenario)
    for i in range(x.shape[0]):
        units.observe(y[i : i + 1], t[i : i + 1])
        if original and variant == "alg7" and i == 0:
            memory.add(x[i], y[i], t[i])
            continue
        n_batches = 1 if variant == "alg7" else s
        n_mem = min(k if original else k - 1, len(memory))
        pos = [0] * n_batches
        if n_mem:
            mx, my, mt = memory.sample(n_batches, n_mem)
            if original and variant == "alg7":
                pos = torch.randint(
                    0, n_mem + 1, (n_batches,), generator=memory.generator
                ).tolist()
        theta_A0 = copy.deepcopy(model.state_dict())
        for b in range(n_batches):
            batch = [(mx[b, j], my[b, j], mt[b, j], 1.0) for j in range(n_mem)]
            current = (x[i], y[i], t[i], float(s) if variant == "alg7" else 1.0)
            batch.insert(n_mem if variant == "alg6" else pos[b], current)
            theta_W0 = copy.deepcopy(model.state_dict())
            for xj, yj, tj, scale in batch:
                model.zero_grad()
                z = units.mask(model(xj.unsqueeze(0)), tj.view(1))
                loss = scale * F.cross_entropy(z, yj.view(1))
                loss.backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= lr * p.grad
            per_batch = {"alg1": beta}.get(variant)
            if original and variant == "alg6":
                per_batch = gamma
            if per_batch is not None:
                theta = model.state_dict()
                model.load_state_dict(
                    {
                        n: theta_W0[n] + per_batch * (theta[n] - theta_W0[n])
                        for n in theta
                    }
                )
        if not (original and variant == "alg6"):
            theta = model.state_dict()
            model.load_state_dict(
                {n: theta_A0[n] + gamma * (theta[n] - theta_A0[n]) for n in theta}
            )
        memory.add(x[i], y[i], t[i])
    return model


HP = dict(lr=0.1, k=3, s=3, beta=0.5, gamma=0.7, mem_size=4, seed=5)


def _mer(
    model,
    variant="alg1",
    fast_path=True,
    scenario="domain",
    loop=None,
    convention="paper",
):
    """A MER with the tests' hyper-parameters; ``loop`` forces the inner loop."""
    strategy = _make_mer(model, variant, fast_path, scenario, convention)
    if loop == "torchscript":
        strategy._bind()
        strategy._native = None
    if loop is not None:
        assert strategy.inner_loop == loop
    return strategy


def _make_mer(model, variant, fast_path, scenario, convention="paper"):
    return MER(
        convention=convention,
        model=model,
        lr=HP["lr"],
        mem_size=HP["mem_size"],
        replay_batch_size=HP["k"],
        batches_per_example=HP["s"],
        beta=HP["beta"] if variant == "alg1" else None,
        gamma=HP["gamma"],
        variant=variant,
        scenario=scenario,
        num_classes=C,
        seed=HP["seed"],
        fast_path=fast_path,
        evaluator=_silent(),
    )


LOOPS = ["native", "torchscript", "autograd"]


@pytest.mark.parametrize("variant", ["alg1", "alg6", "alg7"])
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("convention", ["paper", "original"])
def test_equals_reference_algorithm(variant, loop, convention):
    torch.manual_seed(0)
    model = MLP(D, (8, 8), C)
    x, y, t = _stream(n=7)  # mem_size 4 < 7: reservoir replacements happen
    ref = _reference(model, x, y, t, variant=variant, convention=convention, **HP)
    strategy = _mer(
        copy.deepcopy(model),
        variant,
        loop != "autograd",
        loop=loop,
        convention=convention,
    )
    _run_strategy(strategy, x, y, t)
    assert not torch.equal(_params(ref), _params(model))  # it did learn something
    torch.testing.assert_close(
        _params(strategy.model), _params(ref), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("loop", ["native", "torchscript"])
def test_fast_path_equals_general_path_with_class_masks(loop):
    torch.manual_seed(1)
    model = MLP(D, (8, 8), C)
    x, y, t = _stream(n=9, seed=1)
    y = y % 3  # class 3 never seen: masked in Class-IL
    fast = _mer(copy.deepcopy(model), scenario="class", loop=loop)
    general = _mer(copy.deepcopy(model), fast_path=False, scenario="class")
    _run_strategy(fast, x, y, t)
    _run_strategy(general, x, y, t)
    assert general.inner_loop == "autograd"
    torch.testing.assert_close(_params(fast.model), _params(general.model))
    ref = _reference(model, x, y, t, variant="alg1", scenario="class", **HP)
    torch.testing.assert_close(_params(fast.model), _params(ref), rtol=1e-5, atol=1e-6)
    # the unit of the unseen class never received a gradient
    assert torch.equal(fast.model.classifier.bias[3], model.classifier.bias[3])


@pytest.mark.parametrize("loop", LOOPS)
def test_task_il_masking_uses_each_samples_own_task(loop):
    torch.manual_seed(2)
    model = MLP(D, (8,), C)
    strategy = _mer(
        copy.deepcopy(model), fast_path=loop != "autograd", scenario="task", loop=loop
    )
    strategy._make_active_units(C)
    strategy.active_units.observe_classes([0, 1], task=0)
    strategy.active_units.observe_classes([2, 3], task=1)
    strategy._bind()
    x = torch.randn(2, D)
    y = torch.tensor([1, 3])
    t = torch.tensor([0, 1])
    bias_before = strategy.model.classifier.bias.detach().clone()
    # a task-1 memory alone: only task 1's units (2, 3) move
    strategy.sgd_steps(x[1:], y[1:], t[1:], strategy.inactive_units(t[1:]), [1.0])
    delta = strategy.model.classifier.bias.detach() - bias_before
    assert torch.all(delta[:2] == 0) and torch.all(delta[2:] != 0)
    # its gradient is the softmax over units 2, 3 only
    z = model(x[1:])[0, 2:]
    expected = -HP["lr"] * (z.softmax(0) - F.one_hot(torch.tensor(1), 2))
    torch.testing.assert_close(delta[2:], expected.detach())
    # a mixed batch (task 0 then task 1): the task-0 sample moves only units 0, 1
    strategy.model.classifier.bias.data.copy_(bias_before)
    strategy.sgd_steps(x[:1], y[:1], t[:1], strategy.inactive_units(t[:1]), [1.0])
    delta = strategy.model.classifier.bias.detach() - bias_before
    assert torch.all(delta[:2] != 0) and torch.all(delta[2:] == 0)


def _benchmark(task_labels, n=160, seed=0, n_experiences=2):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(C, D, generator=g) * 3

    def data(m):
        y = torch.randint(0, C, (m,), generator=g)
        return make_dataset(means[y] + torch.randn(m, D, generator=g), y)

    return nc_benchmark(
        data(n), data(n), n_experiences, task_labels=task_labels, shuffle=False, seed=0
    )


def _evaluator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(experience=True, stream=True))


@pytest.mark.parametrize(
    "scenario,multihead",
    [("task", False), ("task", True), ("class", False), ("domain", False)],
)
def test_smoke_every_scenario_and_accuracy_above_chance(scenario, multihead):
    torch.manual_seed(3)
    bm = _benchmark(task_labels=scenario == "task", n=120 if multihead else 160)
    model = MultiHeadMLP(D, (16,)) if multihead else MLP(D, (16,), C)
    strategy = MER(
        model=model,
        lr=0.05,
        mem_size=40,
        replay_batch_size=4,
        batches_per_example=2,
        beta=0.5,
        scenario=scenario,
        num_classes=C,
        train_mb_size=4,
        seed=0,
        evaluator=_evaluator(),
    )
    assert strategy.uses_fast_path != multihead
    for experience in bm.train_stream:
        strategy.train(experience)
    n_train = sum(len(e.dataset) for e in bm.train_stream)
    assert len(strategy.memory) == 40 and strategy.memory.n_seen == n_train
    accs = [v for k, v in strategy.eval(bm.test_stream).items() if "Top1_Acc_Exp" in k]
    assert len(accs) == 2
    # chance: 1/4 in Class/Domain-IL, 1/2 in Task-IL; both tasks remembered
    assert min(accs) > 0.8, accs


def test_er_smoke_and_reference_step():
    torch.manual_seed(4)
    bm = _benchmark(task_labels=False)
    model = MLP(D, (16,), C)
    strategy = ER(
        model=copy.deepcopy(model),
        lr=0.05,
        mem_size=30,
        replay_batch_size=5,
        scenario="class",
        seed=0,
        evaluator=_evaluator(),
    )
    for experience in bm.train_stream:
        strategy.train(experience)
    accs = [v for k, v in strategy.eval(bm.test_stream).items() if "Top1_Acc_Exp" in k]
    assert min(accs) > 0.8, accs
    # one ER step == one SGD step on [current + k-1 memories] (same draws)
    er = ER(
        model=copy.deepcopy(model),
        lr=0.1,
        mem_size=4,
        replay_batch_size=3,
        scenario="domain",
        num_classes=C,
        seed=7,
        evaluator=_silent(),
    )
    x, y, t = _stream(n=5, seed=2)
    _run_strategy(er, x, y, t)
    ref = copy.deepcopy(model)
    memory = ReservoirMemory(4, seed=7)
    for i in range(5):
        xb, yb = x[i : i + 1], y[i : i + 1]
        if len(memory):
            mx, my, _ = memory.sample(1, min(2, len(memory)))
            xb, yb = torch.cat([xb, mx[0]]), torch.cat([yb, my[0]])
        ref.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
        memory.add(x[i], y[i], t[i])
    torch.testing.assert_close(_params(er.model), _params(ref))


def test_checkpoint_resume_is_bit_identical():
    bm = _benchmark(task_labels=False, n=60, seed=5)
    torch.manual_seed(6)
    model = MLP(D, (8,), C)

    def build(m):
        return MER(
            model=m,
            lr=0.05,
            mem_size=10,
            replay_batch_size=4,
            batches_per_example=2,
            beta=0.3,
            scenario="class",
            num_classes=C,
            seed=1,
            evaluator=_silent(),
        )

    straight = build(copy.deepcopy(model))
    torch.manual_seed(10)
    straight.train(bm.train_stream[0])
    torch.manual_seed(11)
    straight.train(bm.train_stream[1])

    first = build(copy.deepcopy(model))
    torch.manual_seed(10)
    first.train(bm.train_stream[0])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = build(MLP(D, (8,), C))  # fresh model, fresh memory
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    torch.manual_seed(11)
    resumed.train(bm.train_stream[1])
    assert torch.equal(_params(resumed.model), _params(straight.model))
    assert torch.equal(resumed.memory.x, straight.memory.x)


def test_bad_input_gives_clear_errors():
    model = MLP(D, (8,), C)
    with pytest.raises(ValueError, match="beta"):
        MER(model=model, beta=0.0, evaluator=_silent())
    with pytest.raises(ValueError, match="gamma"):
        MER(model=model, gamma=1.5, evaluator=_silent())
    with pytest.raises(ValueError, match="mem_size"):
        MER(model=model, mem_size=0, evaluator=_silent())
    with pytest.raises(ValueError, match="replay_batch_size"):
        MER(model=model, replay_batch_size=-1, evaluator=_silent())
    with pytest.raises(ValueError, match="batches_per_example"):
        MER(model=model, batches_per_example=0, evaluator=_silent())
    with pytest.raises(ValueError, match="variant"):
        MER(model=model, variant="alg2", evaluator=_silent())
    with pytest.raises(ValueError, match="beta"):
        MER(model=model, variant="alg7", beta=0.1, evaluator=_silent())
    with pytest.raises(ValueError, match="momentum"):
        MER(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            evaluator=_silent(),
        )
    with pytest.raises(ValueError, match="num_classes"):
        MER(model=MultiHeadMLP(D, (8,)), evaluator=_silent())
    with pytest.raises(ValueError, match="cannot compose with EWCPlugin"):
        MER(model=model, plugins=[EWCPlugin(1.0)], evaluator=_silent())
    # Task-IL without task labels
    strategy = MER(model=model, scenario="task", evaluator=_silent())
    strategy.mbatch = [torch.randn(1, D), torch.tensor([0])]
    with pytest.raises(ValueError, match="task label"):
        strategy._unpack_minibatch()
    # labels beyond the model's outputs, outputs fewer than num_classes
    bm = _benchmark(task_labels=False, n=20)
    small = MER(
        model=MLP(D, (8,), 3),
        replay_batch_size=2,
        batches_per_example=1,
        evaluator=_silent(),
    )
    with pytest.raises(ValueError, match="outputs"):
        small.train(bm.train_stream)
    wrong = MER(
        model=MLP(D, (8,), 3),
        num_classes=C,
        replay_batch_size=2,
        batches_per_example=1,
        evaluator=_silent(),
    )
    with pytest.raises(ValueError, match="num_classes"):
        wrong.train(bm.train_stream)


@pytest.mark.parametrize("loop", LOOPS)
def test_non_finite_loss_raises_and_is_not_trained_on(loop):
    torch.manual_seed(7)
    strategy = _mer(MLP(D, (8,), C), fast_path=loop != "autograd", loop=loop)
    x, y, t = _stream(n=3)
    _run_strategy(strategy, x, y, t)
    before = _params(strategy.model)
    x_bad = x[:1].clone()
    x_bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError):
        strategy.learn_example(x_bad, y[:1], t[:1])
    assert torch.equal(_params(strategy.model), before)


def test_sequential_model_takes_fast_path_and_others_do_not():
    from avalanche_meta.strategies.mer import mlp_linear_layers

    seq = nn.Sequential(nn.Flatten(), nn.Linear(D, 5), nn.ReLU(), nn.Linear(5, C))
    assert len(mlp_linear_layers(seq)) == 2
    assert (
        mlp_linear_layers(nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, C)))
        is None
    )
    assert mlp_linear_layers(nn.Sequential(nn.Linear(D, C, bias=False))) is None
    assert MASK_VALUE < -1e8


# --------------------------------------------------------------------------------
# Devices (issue 13): no host reads in the inner loops, nothing on the wrong device
# --------------------------------------------------------------------------------
def _meta_stream(n=5):
    x = torch.randn(n, D, device="meta")
    y = torch.zeros(n, dtype=torch.long, device="meta")
    return x, y, torch.zeros(n, dtype=torch.long, device="meta")


@pytest.mark.parametrize("loop", ["torchscript", "autograd"])
@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_mer_inner_loops_run_on_another_device_without_host_reads(loop, scenario):
    """On the "meta" device every read of a value back to the host raises, and so
    does any operation that mixes in a CPU tensor: learning examples there proves
    that the inner loops (TorchScript and autograd, the GPU paths) create nothing on
    the wrong device and never synchronise, except the one check per example."""
    model = MLP(D, (8,), C).to("meta")
    strategy = MER(
        model=model,
        device="meta",
        lr=0.1,
        mem_size=4,
        replay_batch_size=3,
        batches_per_example=2,
        num_classes=C,
        scenario=scenario,
        seed=0,
        fast_path=loop != "autograd",
        evaluator=_silent(),
    )
    assert strategy.inner_loop == loop  # no native kernel off the CPU
    for tensor in (strategy._flat.flat, strategy.memory.y, strategy.active_units.seen):
        assert tensor.device.type == "meta"
    checks = []
    strategy._check_example_finite = lambda: checks.append(1)
    strategy.active_units._grow(1)  # what check_batch does once per mini-batch
    x, y, t = _meta_stream()
    for i in range(x.shape[0]):
        strategy.active_units.observe(y[i : i + 1], t[i : i + 1], check=False)
        strategy.learn_example(x[i : i + 1], y[i : i + 1], t[i : i + 1])
        strategy.memory.add(x[i], y[i], t[i])
    assert len(checks) == x.shape[0]  # one host read per example, none per batch
    assert strategy.memory.x.device.type == "meta"


def test_er_step_runs_on_another_device():
    """Off the CPU, ER's steps flag their losses on the device (nan_check_every's
    default) instead of reading them: a meta tensor cannot be read, so a read
    would fail here."""
    strategy = ER(
        model=MLP(D, (8,), C).to("meta"),
        device="meta",
        mem_size=4,
        replay_batch_size=3,
        num_classes=C,
        scenario="class",
        seed=0,
        evaluator=_silent(),
    )
    x, y, t = _meta_stream()
    for i in range(x.shape[0]):
        strategy.active_units.observe(y[i : i + 1], t[i : i + 1], check=False)
        strategy.learn_example(x[i : i + 1], y[i : i + 1], t[i : i + 1])
        strategy.memory.add(x[i], y[i], t[i])
    guard = strategy._loss_guard
    assert guard._count == x.shape[0]  # every step's loss flagged, none read yet
    assert guard._flag.device.type == "meta"
    assert all(p.device.type == "meta" for p in strategy.model.parameters())


@pytest.mark.parametrize("loop", ["torchscript", "autograd"])
def test_nan_caught_once_per_example_and_parameters_restored(loop):
    """The GPU paths check once per example: a NaN in the example's first batch is
    still caught, reported and not kept, whatever came after it."""
    torch.manual_seed(7)
    strategy = _mer(MLP(D, (8,), C), fast_path=loop != "autograd", loop=loop)
    x, y, t = _stream(n=4)
    _run_strategy(strategy, x, y, t)
    before = _params(strategy.model)
    memory_before = strategy.memory.n_seen
    bad = x[:1].clone()
    bad[0, 2] = float("inf")
    with pytest.raises(NonFiniteLossError, match="restored to before the example"):
        strategy.learn_example(bad, y[:1], t[:1])
    assert torch.equal(_params(strategy.model), before)
    assert strategy.memory.n_seen == memory_before  # nothing stored either
    strategy.learn_example(x[:1], y[:1], t[:1])  # and it goes on afterwards
    assert torch.isfinite(_params(strategy.model)).all()


def test_fast_path_is_skipped_when_forward_hooks_change_the_model():
    model = MLP(D, (8,), C)
    assert _mer(model).inner_loop != "autograd"
    hooked = MLP(D, (8,), C)
    handle = hooked.features[1].register_forward_hook(lambda m, i, o: o * 0)
    assert _mer(hooked).inner_loop == "autograd"  # the compiled loops skip hooks
    handle.remove()
    assert _mer(hooked).inner_loop != "autograd"


@pytest.mark.parametrize("method", ["er", "mer"])
def test_multi_head_state_dict_resumes_across_a_task_boundary(method):
    """Issue 12: a fresh multi-head model has only head 0; load_state_dict gives it
    the saved heads (and widths), the optimizer all parameters, and torch's global
    random state (dropout draws from it) comes back too."""
    from avalanche.models import MTSimpleMLP

    bm = _benchmark(task_labels=True, n=12)

    def build():
        torch.manual_seed(0)
        model = MTSimpleMLP(input_size=D, hidden_size=8)  # dropout 0.5: uses the RNG
        common = dict(
            model=model,
            mem_size=6,
            replay_batch_size=2,
            scenario="task",
            num_classes=C,
            seed=1,
            evaluator=_silent(),
        )
        if method == "er":
            return ER(lr=0.1, **common)
        return MER(lr=0.1, batches_per_example=2, **common)

    straight = build()
    for exp in bm.train_stream[:2]:
        straight.train(exp, shuffle=False)
    buf = io.BytesIO()
    torch.save(straight.state_dict(), buf)  # after task 1: heads 0 and 1
    buf.seek(0)
    straight.train(bm.train_stream[1], shuffle=False)  # goes on: one more pass
    resumed = build()  # a fresh model (head 0 only), reseeded
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert set(resumed.model.classifier.classifiers) == {"0", "1"}
    assert len(resumed.optimizer.param_groups[0]["params"]) == len(
        list(resumed.model.parameters())
    )
    resumed.train(bm.train_stream[1], shuffle=False)
    assert torch.equal(_params(resumed.model), _params(straight.model))
