"""Few-shot meta-learning: task sampling, MAML / FO-MAML / Reptile updates against
hand-written references, the few-shot metric, and smoke runs of every strategy."""

import copy
import io
import math

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
    fine_tune,
    mini_batches,
    query_logits,
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


# ------------------------------------------- non-transductive evaluation (issue 10)
def structured_images(n_classes, per_class, seed):
    """28x28 images: class c is a fixed random blob pattern plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n_classes, 1, 7, 7, generator=g)
    protos = (F.interpolate(low, size=28, mode="bilinear") > 0.6).float()
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = protos[y] + 0.3 * torch.randn(len(y), 1, 28, 28, generator=g)
    return x, y


@pytest.fixture(scope="module")
def trained_omniglot_cnn():
    """learn2learn's OmniglotCNN after 20 Reptile meta-iterations (running
    statistics updated by training), and unseen test classes."""
    from avalanche_meta.utils.quiet_import import import_learn2learn

    torch.manual_seed(0)
    x, y = structured_images(20, 8, seed=0)
    model = import_learn2learn().vision.models.OmniglotCNN(output_size=5)
    strategy = Reptile(
        model=model,
        ways=5,
        shots=4,
        meta_batch_size=1,
        meta_iterations=20,
        evaluator=quiet_evaluator(),
    )
    strategy.train(make_benchmark(x, y).train_stream[0])
    x_te, y_te = structured_images(10, 8, seed=1)
    return model, x_te, y_te


EVAL_KW = dict(
    ways=5,
    shots=1,
    query_shots=3,
    num_tasks=8,
    inner_lr=1e-3,
    inner_steps=10,
    optimizer="adam",
)


def test_non_transductive_evaluation_of_trained_cnn_never_uses_running_stats(
    trained_omniglot_cnn,
):
    model, x, y = trained_omniglot_cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("running_mean") for k in before)
    res = few_shot_accuracy(model, x, y, transductive=False, **EVAL_KW)
    assert all(math.isfinite(a) for a in res.accuracies)
    assert res.mean > 0.4  # chance is 0.2
    # the model (running statistics included) is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # running statistics are never used: absurd ones give the very same accuracies
    absurd = copy.deepcopy(model)
    for name, buf in absurd.named_buffers():
        if name.endswith("running_mean"):
            buf.fill_(50.0)
        elif name.endswith("running_var"):
            buf.fill_(1e-4)
    res_absurd = few_shot_accuracy(absurd, x, y, transductive=False, **EVAL_KW)
    assert res_absurd.accuracies == res.accuracies


def test_non_transductive_query_prediction_ignores_other_queries(trained_omniglot_cnn):
    model, x, y = trained_omniglot_cnn
    task = FewShotTaskSampler(x, y, ways=5, shots=1, query_shots=3, seed=3).sample()
    adapted = fine_tune(
        copy.deepcopy(model),
        task.support_x,
        task.support_y,
        inner_lr=1e-3,
        inner_steps=10,
        optimizer="adam",
    )
    changed = task.query_x.clone()
    changed[0] = 3.0 * torch.randn_like(changed[0])  # another query, very different
    kept = slice(1, None)
    nt = query_logits(adapted, task.support_x, task.query_x, transductive=False)
    nt_changed = query_logits(adapted, task.support_x, changed, transductive=False)
    assert torch.allclose(nt[kept], nt_changed[kept], atol=1e-5)
    assert not torch.allclose(nt[0], nt_changed[0], atol=1e-3)
    # each query's logits are those of a batch-statistics pass on support + query
    by_hand = copy.deepcopy(adapted).train()
    with torch.no_grad():
        for i in range(len(task.query_x)):
            batch = torch.cat([task.support_x, task.query_x[i : i + 1]])
            assert torch.allclose(by_hand(batch)[-1], nt[i], atol=1e-5)
    # transductive predictions do depend on the other queries (batch statistics)
    tr = query_logits(adapted, task.support_x, task.query_x, transductive=True)
    tr_changed = query_logits(adapted, task.support_x, changed, transductive=True)
    assert not torch.allclose(tr[kept], tr_changed[kept], atol=1e-3)


def test_fine_tune_mini_batches_of_the_support_set():
    # the official rule when the batch size divides n: each pass is a permutation
    idx = list(mini_batches(20, 10, 6, torch.Generator().manual_seed(0)))
    assert all(len(i) == 10 for i in idx)
    for p in range(3):
        assert sorted(torch.cat(idx[2 * p : 2 * p + 2]).tolist()) == list(range(20))
    assert list(mini_batches(5, None, 3)) == [None] * 3
    assert list(mini_batches(5, 5, 2)) == [None] * 2
    # fine_tune sees batches of batch_size samples
    sizes = []
    model = nn.Sequential(nn.Linear(4, 3))
    model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    x, y = labelled_blobs(n_classes=3, per_class=4)
    fine_tune(model, x, y, inner_lr=0.1, inner_steps=4, batch_size=5)
    assert sizes == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="inner_batch_size"):
        FewShotAccuracy(inner_batch_size=0)
    with pytest.raises(ValueError, match="transductive"):
        FewShotAccuracy(transductive="no")


# ------------------------------------------------------------------ presets
#: Omniglot commands of the supervised-reptile README (flags only), per preset.
REPTILE_README = {
    "paper-5way1shot-transductive": "--shots 1 --inner-batch 10 --inner-iters 5 "
    "--meta-step 1 --meta-batch 5 --meta-iters 100000 --eval-batch 5 --eval-iters 50 "
    "--learning-rate 0.001 --meta-step-final 0 --train-shots 10 --transductive",
    "paper-5way5shot": "--train-shots 10 --inner-batch 10 --inner-iters 5 "
    "--learning-rate 0.001 --meta-step 1 --meta-step-final 0 --meta-batch 5 "
    "--meta-iters 100000 --eval-batch 5 --eval-iters 50",
    "paper-5way1shot": "--shots 1 --inner-batch 10 --inner-iters 5 --meta-step 1 "
    "--meta-batch 5 --meta-iters 100000 --eval-batch 5 --eval-iters 50 "
    "--learning-rate 0.001 --meta-step-final 0 --train-shots 10",
    "paper-20way1shot": "--shots 1 --classes 20 --inner-batch 20 --inner-iters 10 "
    "--meta-step 1 --meta-batch 5 --meta-iters 200000 --eval-batch 10 "
    "--eval-iters 50 --learning-rate 0.0005 --meta-step-final 0 --train-shots 10",
    "paper-20way5shot": "--classes 20 --inner-batch 20 --inner-iters 10 --meta-step 1 "
    "--meta-batch 5 --meta-iters 200000 --eval-batch 10 --eval-iters 50 "
    "--learning-rate 0.0005 --meta-step-final 0 --train-shots 10",
}
#: their flag -> (our hyper-parameter, their default)
REPTILE_FLAGS = {
    "--classes": ("ways", 5),
    "--shots": ("eval_shots", 5),
    "--train-shots": ("shots", 0),
    "--inner-batch": ("inner_batch_size", 5),
    "--inner-iters": ("inner_steps", 20),
    "--learning-rate": ("inner_lr", 1e-3),
    "--meta-step": ("meta_step_size", 0.1),
    "--meta-step-final": ("meta_step_size_final", 0.1),
    "--meta-batch": ("meta_batch_size", 1),
    "--meta-iters": ("meta_iterations", 400000),
    "--eval-batch": ("eval_batch_size", 5),
    "--eval-iters": ("eval_inner_steps", 50),
    "--eval-samples": ("eval_tasks", 10000),
}


def _readme_hparams(command):
    words = command.split()
    out = {name: default for name, default in REPTILE_FLAGS.values()}
    out["eval_transductive"] = "--transductive" in words
    words = [w for w in words if w != "--transductive"]
    for flag, value in zip(words[::2], words[1::2]):
        out[REPTILE_FLAGS[flag][0]] = float(value)
    if out["shots"] == 0:  # --train-shots 0: training tasks have --shots samples
        out["shots"] = out["eval_shots"]
    return out


def test_reptile_presets_are_the_readme_commands():
    from avalanche_meta.cli import registry
    from avalanche_meta.cli.methods.fewshot import _metric
    from avalanche_meta.cli.runner import resolve_hparams

    registry.load_all()
    spec = registry.STRATEGIES["reptile"]
    assert set(REPTILE_README) <= set(spec.presets)
    for preset, command in REPTILE_README.items():
        hp = resolve_hparams(spec, preset)
        for name, value in _readme_hparams(command).items():
            assert hp[name] == value, (preset, name, hp[name], value)
        # their evaluation: one query per class, Adam at the training learning
        # rate, rotations of the training characters as new classes
        assert hp["eval_query_shots"] == 1 and hp["eval_inner_lr"] is None
        assert hp["class_rotations"] and hp["eval_ways"] in (None, hp["ways"])
        metric = _metric(hp, hp["ways"], hp["inner_lr"], optimizer="adam")
        assert metric.kwargs["inner_batch_size"] == hp["eval_batch_size"]
        assert metric.kwargs["transductive"] == hp["eval_transductive"]
        assert metric.kwargs["inner_lr"] == hp["inner_lr"]
        assert metric.kwargs["optimizer"] == "adam"
        # their evaluation continues the meta-training Adam
        assert hp["eval_continue_adam"] and metric.continue_adam


def test_maml_presets_are_the_papers_settings():
    from avalanche_meta.cli import registry
    from avalanche_meta.cli.runner import resolve_hparams

    registry.load_all()
    # SPEC section 4 (Finn et al. 2017)
    five = dict(inner_lr=0.4, inner_steps=1, meta_batch_size=32, meta_lr=1e-3)
    expected = {
        "paper-5way1shot": dict(ways=5, shots=1, **five),
        "paper-5way5shot": dict(ways=5, shots=5, **five),
        "paper-20way1shot": dict(
            ways=20, shots=1, inner_lr=0.1, inner_steps=5, meta_batch_size=16
        ),
    }
    for name in ("maml", "fomaml"):
        spec = registry.STRATEGIES[name]
        for preset, values in expected.items():
            hp = resolve_hparams(spec, preset)
            for k, v in values.items():
                assert hp[k] == v, (name, preset, k)
            assert hp["meta_iterations"] == 60000 and hp["eval_shots"] == hp["shots"]
            assert hp["eval_inner_lr"] == hp["inner_lr"]
            assert hp["eval_inner_steps"] == 10 and hp["eval_transductive"]


def test_fine_tune_continues_a_given_adam_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = labelled_blobs(n_classes=3, per_class=4)
    trainer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.999))
    for _ in range(3):
        trainer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        trainer.step()
    state = trainer.state_dict()
    saved = copy.deepcopy(state["state"])
    p0 = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    lr = 1e-3
    tuned = fine_tune(
        copy.deepcopy(model),
        x,
        y,
        inner_lr=lr,
        inner_steps=1,
        optimizer="adam",
        adam_state=state,
    )
    for i, (p, p_old, g) in enumerate(zip(tuned.parameters(), p0, grads)):
        # beta1 = 0: m = g; v from the saved state; step 4 of the bias correction
        v = 0.999 * saved[i]["exp_avg_sq"] + 0.001 * g**2
        denom = v.sqrt() / math.sqrt(1 - 0.999**4) + 1e-8
        assert torch.allclose(p, p_old - lr * g / denom, atol=1e-7)
    for i, s in saved.items():  # the given state is not modified
        assert all(torch.equal(s[k], state["state"][i][k]) for k in s)
    fresh = fine_tune(
        copy.deepcopy(model), x, y, inner_lr=lr, inner_steps=1, optimizer="adam"
    )
    assert not torch.allclose(fresh[0].weight, tuned[0].weight)
    with pytest.raises(ValueError, match="adam_state"):
        fine_tune(
            nn.Sequential(nn.Linear(4, 5)),
            x,
            y,
            inner_lr=lr,
            inner_steps=1,
            optimizer="adam",
            adam_state=state,
        )


def test_fewshot_metric_continue_adam_uses_and_keeps_the_strategy_adam():
    torch.manual_seed(0)
    x, y = labelled_blobs(n_classes=6, per_class=5, image=True)
    kw = dict(ways=3, shots=1, query_shots=2, num_tasks=4, optimizer="adam")
    kw.update(inner_lr=1e-2, inner_steps=3)
    metric = FewShotAccuracy(continue_adam=True, **kw)
    strategy = Reptile(
        model=ConvNet(3),
        ways=3,
        shots=3,
        meta_iterations=2,
        evaluator=quiet_evaluator(metric),
    )
    bm = make_benchmark(x, y)
    strategy.train(bm.train_stream[0])
    before = copy.deepcopy(strategy.optimizer.state_dict())
    strategy.eval(bm.test_stream)
    after = strategy.optimizer.state_dict()
    for i, s in before["state"].items():
        assert all(torch.equal(s[k], after["state"][i][k]) for k in s)
    common = dict(seed=metric.seed, **kw)
    continued = few_shot_accuracy(strategy.model, x, y, adam_state=before, **common)
    assert metric.results[0].accuracies == continued.accuracies
    with pytest.raises(ValueError, match="continue_adam"):
        FewShotAccuracy(continue_adam=True)  # optimizer="sgd"
    net = ConvNet(6)
    sgd = TransferLearning(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        evaluator=quiet_evaluator(FewShotAccuracy(continue_adam=True, **kw)),
    )
    with pytest.raises(ValueError, match="continue_adam=False"):
        sgd.eval(bm.test_stream)


# ------------------------------------------------ few-shot as a tool (issue 12)
def feature_blobs(n_classes=12, per_class=10, dim=16, seed=0):
    """Classes around fixed random centres (the same centres for every seed)."""
    centres = 3 * torch.randn(
        n_classes, dim, generator=torch.Generator().manual_seed(7)
    )
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[y] + 0.5 * torch.randn(len(y), dim, generator=g), y


def omniglot_fc(out):
    from avalanche_meta.utils.quiet_import import import_learn2learn

    return import_learn2learn().vision.models.OmniglotFC(
        input_size=16, output_size=out, sizes=[32, 32]
    )


def build_trained(name, evaluator):
    """A strategy trained a little on the first 8 classes of ``feature_blobs``."""
    from avalanche_meta.evaluation.fewshot import FewShotEval, FewShotRule

    torch.manual_seed(0)
    rule = {
        "maml": FewShotRule(inner_lr=0.4, inner_steps=5),
        "fomaml": FewShotRule(inner_lr=0.4, inner_steps=5),
        "reptile": FewShotRule(inner_lr=0.01, inner_steps=10, optimizer="adam"),
        "transfer": FewShotRule(inner_lr=0.1, inner_steps=20),
    }[name]
    fe = FewShotEval(ways=3, shots=1, query_shots=4, num_tasks=3, rule=rule)
    common = dict(fewshot_eval=fe, evaluator=evaluator)
    meta = dict(ways=3, meta_batch_size=2, meta_iterations=4, **common)
    if name == "maml":
        s = MAML(model=omniglot_fc(3), **meta)
    elif name == "fomaml":
        s = FOMAML(model=omniglot_fc(3), **meta)
    elif name == "reptile":
        s = Reptile(model=omniglot_fc(3), shots=3, inner_lr=0.01, **meta)
    else:
        s = TransferLearning(model=omniglot_fc(8), train_epochs=2, **common)
    x, y = feature_blobs()
    train = y < 8
    xt, yt = feature_blobs(seed=1)
    test = yt >= 8
    bm = make_benchmark(x[train], y[train], xt[test], yt[test])
    s.train(bm.train_stream[0])
    return s, bm


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "transfer"])
def test_saved_model_adapts_to_a_users_task_as_the_strategy_evaluates(name, tmp_path):
    from avalanche.core import SupervisedPlugin

    from avalanche_meta import fewshot

    class Record(SupervisedPlugin):
        seen = []

        def after_eval_iteration(self, strategy, **kwargs):
            self.seen.append((strategy.eval_task, strategy.mb_output.clone()))

    record = Record()
    strategy, bm = build_trained(name, quiet_evaluator())
    strategy.plugins.append(record)
    strategy.eval(bm.test_stream)
    assert len(record.seen) == 3  # one evaluation iteration per task

    fewshot.save(strategy, tmp_path)
    learner = fewshot.load(tmp_path)  # a fresh model, built from the JSON
    assert learner.model is not strategy.model
    assert learner.info["method"] == type(strategy).__name__

    # the strategy's evaluation tasks, with user labels (output unit i is the i-th
    # smallest label, so these give the evaluation's unit order)
    labels = torch.tensor([7, 19, 42])
    for task, logits in record.seen:
        sy = labels[task.support_y]
        adapted = learner.adapt(task.support_x, sy)
        assert torch.equal(adapted.classes, labels)
        assert torch.allclose(adapted.logits(task.query_x), logits, atol=1e-6)
        assert torch.equal(adapted.predict(task.query_x), labels[logits.argmax(1)])
        assert torch.equal(
            learner.predict(task.support_x, sy, task.query_x),
            adapted.predict(task.query_x),
        )
        assert torch.equal(
            strategy.predict(task.support_x, sy, task.query_x),
            adapted.predict(task.query_x),
        )

    # a task built here from the 4 unseen classes: 4-way 2-shot, labels 100..103
    x, y = feature_blobs(seed=5)
    picks = [torch.nonzero(y == c).flatten() for c in (8, 9, 10, 11)]
    sx = torch.cat([x[p[:2]] for p in picks])
    sy = torch.arange(100, 104).repeat_interleave(2)
    qx = torch.cat([x[p[2:]] for p in picks])
    qy = torch.arange(100, 104).repeat_interleave(8)
    pred = learner.predict(sx, sy, qx)
    assert set(pred.tolist()) <= set(range(100, 104))
    assert (pred == qy).float().mean() > 0.75  # chance: 0.25


def test_torch_save_of_l2l_cnn_fails_but_fewshot_save_load_round_trips(tmp_path):
    from avalanche_meta import fewshot
    from avalanche_meta.evaluation.fewshot import FewShotRule
    from avalanche_meta.utils.quiet_import import import_learn2learn

    l2l = import_learn2learn()
    torch.manual_seed(0)
    cnn = l2l.vision.models.OmniglotCNN(output_size=3, hidden_size=8, layers=2)
    with pytest.raises(Exception):  # the lambdas inside learn2learn's network
        torch.save(cnn, io.BytesIO())
    rule = FewShotRule(inner_lr=0.2, inner_steps=3, transductive=False)
    fewshot.save(cnn, tmp_path, rule=rule)
    learner = fewshot.load(tmp_path / fewshot.CONFIG_FILE)
    assert learner.rule == rule
    x = torch.randn(6, 1, 28, 28)
    cnn.eval(), learner.model.eval()
    assert torch.equal(cnn(x), learner.model(x))
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, learner.model.state_dict()[k])
    # any other model: an importable factory, checked at save time
    with pytest.raises(ValueError, match="factory"):
        fewshot.save(ConvNet(3), tmp_path / "conv")
    fewshot.save(
        tiny_mlp(d_in=4, ways=3).float(),
        tmp_path / "mlp",
        factory=_mlp_factory,
        kwargs={"d_in": 4, "ways": 3},
    )
    assert isinstance(fewshot.load(tmp_path / "mlp").model, nn.Sequential)
    with pytest.raises(ValueError, match="does not rebuild"):
        fewshot.save(
            tiny_mlp(d_in=4, ways=3).float(),
            tmp_path / "bad",
            factory=_mlp_factory,
            kwargs={"d_in": 5, "ways": 3},
        )
    with pytest.raises(FileNotFoundError, match="fewshot.save"):
        fewshot.load(tmp_path / "nothing")


def _mlp_factory(d_in, ways):
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, ways))


def test_adapt_works_before_train_and_never_changes_the_model():
    model = omniglot_fc(3)
    strategy = MAML(model=model, ways=3, evaluator=quiet_evaluator())
    before = copy.deepcopy(model.state_dict())
    x, y = feature_blobs(n_classes=3, per_class=4)
    pred = strategy.predict(x, y * 10 + 1, x)
    assert pred.shape == (12,) and set(pred.tolist()) <= {1, 11, 21}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="single label"):
        strategy.adapt(x, torch.zeros(12, dtype=torch.long))
    with pytest.raises(ValueError, match="one label per support sample"):
        strategy.adapt(x, y[:5])


# ------------------------------------------------ construction errors (issue 12)
@pytest.mark.parametrize("cls", [MAML, FOMAML, Reptile, TransferLearning])
def test_keyword_only_and_typo_errors_name_the_argument(cls):
    from avalanche_meta.strategies._fewshot import StrategyArgumentError

    model = omniglot_fc(3)
    with pytest.raises(StrategyArgumentError, match="keyword arguments only"):
        cls(model)
    with pytest.raises(TypeError, match=f"{cls.__name__}.*keyword arguments only"):
        cls(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="'optimiser'.*did you mean 'optimizer'"):
        cls(model=model, optimiser=None)
    if cls is not TransferLearning:
        for arg, fix in [
            ("train_mb_size", "meta_batch_size"),
            ("train_epochs", "meta_iterations"),
            ("eval_mb_size", "FewShotEval"),
        ]:
            with pytest.raises(ValueError, match=f"`{arg}`.*{fix}"):
                cls(model=model, **{arg: 2})
    else:  # ordinary Avalanche arguments of a classification training
        s = cls(model=model, train_mb_size=5, train_epochs=2, eval_mb_size=7)
        assert (s.train_mb_size, s.train_epochs, s.eval_mb_size) == (5, 2, 7)


def test_fomaml_refuses_first_order():
    with pytest.raises(ValueError, match="always first order"):
        FOMAML(model=omniglot_fc(3), first_order=False)


# ------------------------------------------------ devices and syncs (issue 13)
@pytest.mark.parametrize("cls", [MAML, FOMAML, Reptile])
def test_training_on_the_meta_device_creates_nothing_elsewhere_and_never_syncs(cls):
    """On the ``meta`` device every op mixing a CPU tensor with a model tensor
    raises, and ``.item()`` / ``bool()`` / ``.tolist()`` raise: a meta-training run
    proves that the loop puts every tensor on the strategy's device and never
    reads a value back from it."""
    torch.manual_seed(0)
    x, y = feature_blobs(n_classes=6, per_class=5)
    bm = make_benchmark(x, y)
    model = nn.Sequential(
        nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )
    kw = dict(shots=3) if cls is Reptile else {}
    s = cls(
        model=model,
        ways=3,
        meta_batch_size=2,
        meta_iterations=2,
        device="meta",
        evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
        **kw,
    )
    s.train(bm.train_stream[0])
    assert s.total_meta_iterations == 2
    assert {p.device.type for p in s.model.parameters()} == {"meta"}
    adapted = s.adapt(x[:6], y[:6] % 3)  # the adaptation path too
    assert adapted.logits(x[6:9]).device.type == "meta"


def test_nan_loss_is_still_caught_once_per_meta_update():
    from avalanche_meta.utils.validation import NonFiniteLossError

    x, y = feature_blobs(n_classes=6, per_class=5)
    x[:, 3] = float("nan")
    for cls, shots in ((MAML, 2), (Reptile, 4)):
        model = omniglot_fc(3)
        theta = copy.deepcopy(model.state_dict())
        s = cls(
            model=model,
            ways=3,
            shots=shots,
            meta_batch_size=2,
            meta_iterations=3,
            evaluator=quiet_evaluator(),
        )
        with pytest.raises(NonFiniteLossError, match="inner step 0: the loss"):
            s.train(make_benchmark(x, y).train_stream[0])
        assert s.meta_iteration == 0  # the first meta-update stopped
        for k, v in model.state_dict().items():  # before stepping on it
            assert torch.equal(v, theta[k]), k


# ------------------------------------------------------------- threads (issue 12)
def test_threads_warning_once_and_never_a_silent_change(monkeypatch):
    from avalanche_meta import fewshot
    from avalanche_meta.strategies import _fewshot

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setitem(_fewshot._THREADS, "chosen", False)
    monkeypatch.setitem(_fewshot._THREADS, "warned", False)
    x, y = feature_blobs(n_classes=6, per_class=5)
    exp = make_benchmark(x, y).train_stream[0]
    torch.set_num_threads(2)
    try:
        s = MAML(
            model=omniglot_fc(3),
            ways=3,
            meta_batch_size=1,
            meta_iterations=1,
            evaluator=quiet_evaluator(),
        )
        assert torch.get_num_threads() == 2  # the constructor changes nothing
        with pytest.warns(fewshot.ThreadCountWarning, match="set_threads"):
            s.train(exp)
        assert torch.get_num_threads() == 2  # nor does train()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", fewshot.ThreadCountWarning)
            s.train(exp)  # once per process
            monkeypatch.setitem(_fewshot._THREADS, "warned", False)
            fewshot.set_threads(1)  # an explicit choice silences it
            assert torch.get_num_threads() == 1
            s.train(exp)
    finally:
        torch.set_num_threads(1)


def test_saved_reptile_keeps_the_continued_adam_of_its_evaluation(tmp_path):
    """With FewShotAccuracy(continue_adam=True) the evaluation fine-tunes from the
    strategy's Adam state: save() stores it and the loaded learner adapts from it,
    giving the evaluation's logits."""
    from avalanche.core import SupervisedPlugin

    from avalanche_meta import fewshot

    torch.manual_seed(0)
    metric = FewShotAccuracy(
        ways=3,
        shots=1,
        query_shots=4,
        num_tasks=2,
        optimizer="adam",
        inner_lr=0.01,
        inner_steps=5,
        continue_adam=True,
    )
    s = Reptile(
        model=omniglot_fc(3),
        ways=3,
        shots=3,
        inner_lr=0.01,
        meta_batch_size=2,
        meta_iterations=4,
        evaluator=quiet_evaluator(metric),
    )
    x, y = feature_blobs()
    xt, yt = feature_blobs(seed=1)
    bm = make_benchmark(x[y < 8], y[y < 8], xt[yt >= 8], yt[yt >= 8])
    s.train(bm.train_stream[0])
    seen = []

    class Record(SupervisedPlugin):
        def after_eval_iteration(self, strategy, **kwargs):
            seen.append((strategy.eval_task, strategy.mb_output.clone()))

    s.plugins.append(Record())
    s.eval(bm.test_stream)
    learner = fewshot.load(fewshot.save(s, tmp_path))
    assert learner.adam_state is not None and learner.rule.optimizer == "adam"
    fresh = fewshot.FewShotLearner(learner.model, learner.rule)  # a fresh Adam
    for task, logits in seen:
        got = learner.adapt(task.support_x, task.support_y).logits(task.query_x)
        assert torch.allclose(got, logits, atol=1e-6)
        other = fresh.adapt(task.support_x, task.support_y).logits(task.query_x)
        assert not torch.allclose(other, logits, atol=1e-6)
