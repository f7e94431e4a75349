"""Few-shot meta-learning: task sampling, MAML / FO-MAML / Reptile updates against
hand-written references, the few-shot metric, and smoke runs of every strategy."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_meta.evaluation.fewshot import (
    FewShotAccuracy,
    FewShotTask,
    FewShotTaskSampler,
    few_shot_accuracy,
)
from avalanche_meta.strategies.maml import FOMAML, MAML
from avalanche_meta.strategies.reptile import Reptile
from avalanche_meta.strategies.transfer import TransferLearning
from avalanche_meta.strategies.reptile import interpolate


# ------------------------------------------------------------------ helpers
def labelled_blobs(n_classes=6, per_class=6, dim=4, noise=0.1, seed=0, image=False):
    """Well separated classes: class c is centred on 3 * e_c (images: a bright pixel)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    if image:
        x = noise * torch.randn(len(y), 1, 6, 6, generator=g)
        x.view(len(y), -1)[torch.arange(len(y)), y] += 3.0
    else:
        x = noise * torch.randn(len(y), dim, generator=g)
        x[torch.arange(len(y)), y % dim] += 3.0
        x[:, 0] += (y // dim).float()  # keep classes distinct when n_classes > dim
    return x, y


def make_benchmark(x, y, x_test=None, y_test=None):
    ds = _make_taskaware_tensor_classification_dataset(x, y, targets=y.tolist())
    if x_test is None:
        x_test, y_test = x, y
    ds_te = _make_taskaware_tensor_classification_dataset(
        x_test, y_test, targets=y_test.tolist()
    )
    return benchmark_from_datasets(train=[ds], test=[ds_te])


def quiet_evaluator(*metrics):
    return EvaluationPlugin(*metrics, loggers=[TextLogger(io.StringIO())])


def tiny_mlp(d_in=4, ways=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, ways)).double()


def fixed_tasks(seed=1, n_tasks=2, ways=3, shots=1, query=2, dim=4):
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n_tasks):
        xs = torch.randn(ways * shots, dim, generator=g, dtype=torch.double)
        xq = torch.randn(ways * query, dim, generator=g, dtype=torch.double)
        tasks.append(
            FewShotTask(
                xs,
                torch.arange(ways).repeat_interleave(shots),
                xq,
                torch.arange(ways).repeat_interleave(query),
            )
        )
    return tasks


def functional_mlp(params, x):
    w1, b1, w2, b2 = params
    return F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2)


def run_one_meta_update(strategy, tasks, x, y):
    """Train one meta-iteration on exactly ``tasks``."""
    strategy.sample_tasks = lambda: tasks
    strategy.train(make_benchmark(x, y).train_stream[0])


# ------------------------------------------------------------------ sampling
def test_task_sampling_gives_n_classes_times_k_plus_q_with_remapped_labels():
    x, y = labelled_blobs(n_classes=10, per_class=7, dim=16)
    x[:, -1] = y.float()  # remember the original class in the last feature
    sampler = FewShotTaskSampler(x, y, ways=4, shots=2, query_shots=3, seed=0)
    seen = set()
    for _ in range(20):
        t = sampler.sample()
        assert t.support_x.shape == (4 * 2, 16) and t.query_x.shape == (4 * 3, 16)
        assert torch.equal(torch.bincount(t.support_y), torch.full((4,), 2))
        assert torch.equal(torch.bincount(t.query_y), torch.full((4,), 3))
        # each remapped label is one original class, distinct across labels
        orig = {}
        for xx, yy in ((t.support_x, t.support_y), (t.query_x, t.query_y)):
            for row, label in zip(xx[:, -1].long().tolist(), yy.tolist()):
                assert orig.setdefault(label, row) == row
        assert len(set(orig.values())) == 4
        seen |= set(orig.values())
        # support and query never share a sample
        s = {tuple(r) for r in t.support_x.tolist()}
        assert not s & {tuple(r) for r in t.query_x.tolist()}
    assert len(seen) == 10  # every class gets drawn


def test_sampler_is_reproducible_and_leaves_global_random_alone():
    import random

    x, y = labelled_blobs(n_classes=8, per_class=4)
    random.seed(123)
    before = random.random()
    random.seed(123)
    a = FewShotTaskSampler(x, y, ways=3, shots=1, query_shots=1, seed=7).sample()
    b = FewShotTaskSampler(x, y, ways=3, shots=1, query_shots=1, seed=7).sample()
    assert random.random() == before
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


def test_class_rotations_add_rotated_classes_and_task_rotation_rotates():
    x, y = labelled_blobs(n_classes=5, per_class=3, image=True)
    sampler = FewShotTaskSampler(
        x, y, ways=5, shots=1, query_shots=2, class_rotations=True, seed=0
    )
    assert sampler.num_classes == 20
    assert torch.equal(sampler.x[15 : 15 + 15], torch.rot90(x, 1, dims=(-2, -1)))
    rot = FewShotTaskSampler(
        x, y, ways=5, shots=1, query_shots=2, task_rotation_prob=1.0, seed=0
    )
    plain = FewShotTaskSampler(x, y, ways=5, shots=1, query_shots=2, seed=0)
    t_rot, t_plain = rot.sample(), plain.sample()
    assert any(
        torch.equal(t_rot.support_x, torch.rot90(t_plain.support_x, k, dims=(-2, -1)))
        for k in (1, 3)
    )


def test_sampler_bad_input_errors():
    x, y = labelled_blobs(n_classes=4, per_class=3)
    with pytest.raises(ValueError, match="shots"):
        FewShotTaskSampler(x, y, ways=2, shots=2, query_shots=2)
    with pytest.raises(ValueError, match="ways"):
        FewShotTaskSampler(x, y, ways=5, shots=1, query_shots=1)
    with pytest.raises(ValueError, match="class_rotations"):
        FewShotTaskSampler(x, y, ways=2, shots=1, query_shots=1, class_rotations=True)
    with pytest.raises(ValueError, match="task_rotation_prob"):
        FewShotTaskSampler(x, y, ways=2, shots=1, query_shots=1, task_rotation_prob=0.5)


# ------------------------------------------------------------------ MAML
def maml_reference_grad(model, tasks, inner_lr, inner_steps, first_order):
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    total = 0.0
    for t in tasks:
        fast = params
        for _ in range(inner_steps):
            loss = F.cross_entropy(functional_mlp(fast, t.support_x), t.support_y)
            g = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - inner_lr * gi for p, gi in zip(fast, g)]
        total = total + F.cross_entropy(functional_mlp(fast, t.query_x), t.query_y)
    return torch.autograd.grad(total / len(tasks), params)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_equals_hand_written(first_order):
    model = tiny_mlp()
    tasks = fixed_tasks()
    ref = maml_reference_grad(model, tasks, 0.5, 2, first_order)
    other = maml_reference_grad(model, tasks, 0.5, 2, not first_order)
    theta0 = [p.detach().clone() for p in model.parameters()]
    strategy = MAML(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        ways=3,
        shots=1,
        query_shots=2,
        inner_lr=0.5,
        inner_steps=2,
        meta_batch_size=2,
        meta_iterations=1,
        first_order=first_order,
        evaluator=quiet_evaluator(),
    )
    x, y = labelled_blobs()
    run_one_meta_update(strategy, tasks, x.double(), y)
    for p, g, g_other, p0 in zip(model.parameters(), ref, other, theta0):
        assert torch.allclose(p.grad, g, atol=1e-10)
        assert torch.allclose(p.detach(), p0 - 0.1 * g, atol=1e-10)
    # second order and first order really differ (the inner Hessian term)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref, other))


def test_first_order_gradient_is_query_gradient_at_adapted_parameters():
    model = tiny_mlp()
    (task,) = fixed_tasks(n_tasks=1)
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    loss = F.cross_entropy(functional_mlp(params, task.support_x), task.support_y)
    g = torch.autograd.grad(loss, params)
    adapted = [(p - 0.5 * gi).detach().requires_grad_(True) for p, gi in zip(params, g)]
    q = F.cross_entropy(functional_mlp(adapted, task.query_x), task.query_y)
    expected = torch.autograd.grad(q, adapted)
    strategy = FOMAML(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        ways=3,
        shots=1,
        query_shots=2,
        inner_lr=0.5,
        inner_steps=1,
        meta_batch_size=1,
        meta_iterations=1,
        evaluator=quiet_evaluator(),
    )
    x, y = labelled_blobs()
    run_one_meta_update(strategy, [task], x.double(), y)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-10)


def test_maml_bad_arguments():
    model = tiny_mlp(ways=4).float()
    with pytest.raises(ValueError, match="meta_lr"):
        MAML(model=model, optimizer=torch.optim.Adam(model.parameters()), meta_lr=0.1)
    with pytest.raises(ValueError, match="first order"):
        FOMAML(model=model, first_order=False)
    with pytest.raises(ValueError, match="inner_lr"):
        MAML(model=model, inner_lr=-1.0)
    x, y = labelled_blobs()
    wrong_head = MAML(
        model=model,
        ways=3,
        meta_iterations=1,
        meta_batch_size=1,
        evaluator=quiet_evaluator(),
    )
    with pytest.raises(ValueError, match="outputs 4 units"):
        wrong_head.train(make_benchmark(x, y).train_stream[0])
    too_many_ways = MAML(
        model=tiny_mlp(ways=8).float(),
        ways=8,
        meta_iterations=1,
        evaluator=quiet_evaluator(),
    )
    with pytest.raises(ValueError, match="fewer than `ways`"):
        too_many_ways.train(make_benchmark(x, y).train_stream[0])


# ------------------------------------------------------------------ Reptile
def test_reptile_update_equals_interpolation_formula():
    model = tiny_mlp()
    tasks = [
        FewShotTask(t.support_x, t.support_y, t.query_x[:0], t.query_y[:0])
        for t in fixed_tasks(n_tasks=3, shots=2)
    ]
    phi = [p.detach().clone() for p in model.parameters()]
    lr, steps, eps = 0.3, 3, 0.7
    phi_tildes = []
    for t in tasks:
        w = [p.clone().requires_grad_(True) for p in phi]
        for _ in range(steps):
            loss = F.cross_entropy(functional_mlp(w, t.support_x), t.support_y)
            g = torch.autograd.grad(loss, w)
            w = [(p - lr * gi).detach().requires_grad_(True) for p, gi in zip(w, g)]
        phi_tildes.append([p.detach() for p in w])
    expected = [
        p + eps * (sum(pt[i] for pt in phi_tildes) / len(tasks) - p)
        for i, p in enumerate(phi)
    ]
    strategy = Reptile(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        ways=3,
        shots=2,
        inner_steps=steps,
        inner_batch_size=100,  # full batch: the order of samples does not matter
        meta_batch_size=3,
        meta_step_size=eps,
        meta_iterations=1,
        evaluator=quiet_evaluator(),
    )
    x, y = labelled_blobs()
    run_one_meta_update(strategy, tasks, x.double(), y)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.detach(), e, atol=1e-10)
    # the flat buffer helper itself
    a, b = torch.zeros(3), torch.ones(3)
    assert torch.allclose(interpolate(a, b, 0.25), torch.full((3,), 0.25))


def test_reptile_meta_step_is_annealed_linearly():
    strategy = Reptile(
        model=tiny_mlp(),
        meta_iterations=4,
        meta_step_size=1.0,
        meta_step_size_final=0.0,
        evaluator=quiet_evaluator(),
    )
    values = []
    for i in range(4):
        strategy.meta_iteration = i
        values.append(strategy.epsilon)
    assert values == [1.0, 0.75, 0.5, 0.25]


# ------------------------------------------------------------------ evaluation
class ConvNet(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()
        )
        self.head = nn.Linear(4 * 36, out)

    def forward(self, x):
        return self.head(self.features(x))


def test_fewshot_metric_is_100_percent_when_support_determines_query():
    # identical samples within a class: after fine-tuning a fresh head on the
    # support set the query set is classified perfectly
    y = torch.arange(6).repeat_interleave(5)
    x = 3.0 * F.one_hot(y, 6).float()
    model = nn.Sequential(nn.Identity(), nn.Linear(6, 6))
    res = few_shot_accuracy(
        model,
        x,
        y,
        ways=3,
        shots=1,
        query_shots=4,
        num_tasks=20,
        inner_lr=1.0,
        inner_steps=10,
    )
    assert res.mean == 1.0 and res.ci95 == 0.0 and len(res.accuracies) == 20


def test_fewshot_evaluation_leaves_model_unchanged():
    torch.manual_seed(0)
    x, y = labelled_blobs(n_classes=6, per_class=5, image=True)
    model = ConvNet(out=10)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = few_shot_accuracy(
        model, x, y, ways=3, shots=1, query_shots=2, num_tasks=5, inner_lr=0.1
    )
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.head.out_features == 10 and 0.0 <= res.mean <= 1.0


def test_fewshot_metric_through_evaluation_plugin_and_matrix():
    x, y = labelled_blobs(n_classes=6, per_class=5, image=True)
    metric = FewShotAccuracy(ways=3, shots=1, query_shots=2, num_tasks=8, inner_lr=0.5)
    torch.manual_seed(0)
    strategy = TransferLearning(
        model=ConvNet(out=6), train_epochs=1, evaluator=quiet_evaluator(metric)
    )
    bm = make_benchmark(x, y)
    strategy.train(bm.train_stream[0])
    res = strategy.eval(bm.test_stream)
    acc = res["FewShotAcc_Exp/eval_phase/test_stream/Exp000"]
    ci = res["FewShotAcc95CI_Exp/eval_phase/test_stream/Exp000"]
    assert res["FewShotAcc_Stream/eval_phase/test_stream"] == acc
    assert metric.matrix == [[acc]] and metric.ci_matrix == [[ci]]
    restored = FewShotAccuracy()
    restored.load_state_dict(metric.state_dict())
    assert restored.matrix == metric.matrix
    assert acc > 0.6  # chance is 1/3


# ------------------------------------------------------------------ smoke runs
@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "transfer"])
def test_smoke_each_strategy_learns_tiny_problem(name):
    torch.manual_seed(0)
    x, y = labelled_blobs(n_classes=8, per_class=6, image=True, noise=0.3)
    x_te, y_te = labelled_blobs(n_classes=8, per_class=6, image=True, noise=0.3, seed=1)
    bm = make_benchmark(x, y, x_te, y_te + 8)
    metric = FewShotAccuracy(ways=3, shots=1, query_shots=3, num_tasks=10, inner_lr=0.3)
    common = dict(evaluator=quiet_evaluator(metric), meta_iterations=5)
    if name == "maml":
        s = MAML(
            model=ConvNet(3), ways=3, meta_batch_size=2, class_rotations=True, **common
        )
    elif name == "fomaml":
        s = FOMAML(
            model=ConvNet(3),
            ways=3,
            meta_batch_size=2,
            task_rotation_prob=0.5,
            **common,
        )
    elif name == "reptile":
        metric.kwargs.update(optimizer="adam", inner_lr=0.01, inner_steps=20)
        s = Reptile(model=ConvNet(3), ways=3, shots=3, inner_lr=0.01, **common)
    else:
        s = TransferLearning(
            model=ConvNet(8), train_epochs=2, evaluator=common["evaluator"]
        )
    s.train(bm.train_stream[0])
    if name != "transfer":
        assert s.meta_iteration == 5 and s.total_meta_iterations == 5
        state = s.state_dict()
        s.load_state_dict(state)
    res = s.eval(bm.test_stream)
    assert res["FewShotAcc_Exp/eval_phase/test_stream/Exp000"] > 0.6


def test_maml_plugin_loss_terms_reach_the_meta_gradient():
    from avalanche.core import SupervisedPlugin

    class L2(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            strategy.loss += 0.5 * sum(
                (p**2).sum() for p in strategy.model.parameters()
            )

    model = tiny_mlp()
    tasks = fixed_tasks()
    ref = maml_reference_grad(model, tasks, 0.5, 1, False)
    theta0 = [p.detach().clone() for p in model.parameters()]
    strategy = MAML(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        ways=3,
        query_shots=2,
        inner_lr=0.5,
        meta_batch_size=2,
        meta_iterations=1,
        plugins=[L2()],
        evaluator=quiet_evaluator(),
    )
    x, y = labelled_blobs()
    run_one_meta_update(strategy, tasks, x.double(), y)
    for p, g, p0 in zip(model.parameters(), ref, theta0):
        assert torch.allclose(p.grad, g + p0, atol=1e-10)
