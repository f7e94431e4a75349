"""The accuracy matrix and its summaries: hand-computed matrices, and the plugin
metric driven by a real Avalanche strategy compared with evaluating by hand."""

import io

import pytest
import torch
from avalanche.benchmarks import nc_benchmark, split_online_stream
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.logging import (
    CSVLogger,
    InteractiveLogger,
    TensorboardLogger,
    TextLogger,
)
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_meta.evaluation import (
    AccuracyMatrix,
    AverageAccuracy,
    average_accuracy,
    bti,
    bwt,
    continual_metrics,
    forgetting,
    fwt,
    learning_accuracy,
)

torch.set_num_threads(1)

# A 3x3 example worked out by hand (percent).
R3 = [
    [90.0, 10.0, 20.0],
    [95.0, 80.0, 30.0],
    [60.0, 50.0, 85.0],
]
B3 = [10.0, 15.0, 20.0]


def test_hand_computed_3x3():
    # RA: (60 + 50 + 85) / 3
    assert average_accuracy(R3) == pytest.approx(65.0)
    # LA: (90 + 80 + 85) / 3
    assert learning_accuracy(R3) == pytest.approx(85.0)
    # BWT: ((60 - 90) + (50 - 80)) / 2
    assert bwt(R3) == pytest.approx(-30.0)
    # BTI: RA - LA
    assert bti(R3) == pytest.approx(-20.0)
    # forgetting: task 0 peaked at 95 (row 1) -> 35; task 1 peaked at 80 -> 30
    assert forgetting(R3) == pytest.approx(32.5)
    # FWT: (R[0][1] - b1) = -5, (R[1][2] - b2) = 10
    assert fwt(R3, B3) == pytest.approx(2.5)
    assert fwt(R3, None) is None


def test_partial_and_single_row_matrices():
    R2 = R3[:2]  # stopped after two experiences: summaries over the 2 seen tasks
    assert average_accuracy(R2) == pytest.approx((95 + 80) / 2)
    assert average_accuracy(R2, over="all") == pytest.approx((95 + 80 + 30) / 3)
    assert learning_accuracy(R2) == pytest.approx((90 + 80) / 2)
    assert bwt(R2) == pytest.approx(5.0)
    assert forgetting(R2) == pytest.approx(90 - 95)
    assert fwt(R2, B3) == pytest.approx(10 - 15)
    R1 = [[40.0, 60.0, 80.0]]  # Joint training: one row
    assert average_accuracy(R1, over="all") == pytest.approx(60.0)
    assert bwt(R1) is None and forgetting(R1) is None and fwt(R1, B3) is None
    # A 2x2 case: BTI = BWT * (k - 1) / k
    R = [[80.0, 0.0], [50.0, 90.0]]
    assert bwt(R) == pytest.approx(-30.0)
    assert bti(R) == pytest.approx(-15.0)


def test_bad_matrices_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        average_accuracy([])
    with pytest.raises(ValueError, match="ragged"):
        learning_accuracy([[1.0, 2.0], [1.0]])
    with pytest.raises(ValueError, match=r"R\[1\]\[0\]"):
        bwt([[1.0, 2.0], [None, 3.0]])
    with pytest.raises(ValueError, match="rows"):
        average_accuracy([[1.0], [2.0]])
    with pytest.raises(ValueError, match="over"):
        average_accuracy(R3, over="some")


# --------------------------------------------------------------------------------
def make_benchmark(n_exp=3, per_class=30, dim=12, seed=0, task_labels=False):
    """Gaussian blobs, two classes per experience; classes 2e, 2e+1 in experience e."""
    g = torch.Generator().manual_seed(seed)
    n_cls = 2 * n_exp
    centers = torch.randn(n_cls, dim, generator=g) * 1.5

    def draw(n):
        y = torch.arange(n_cls).repeat_interleave(n)
        return centers[y] + torch.randn(len(y), dim, generator=g), y

    (xtr, ytr), (xte, yte) = draw(per_class), draw(per_class // 2)
    return nc_benchmark(
        _make_taskaware_tensor_classification_dataset(xtr, ytr),
        _make_taskaware_tensor_classification_dataset(xte, yte),
        n_exp,
        task_labels=task_labels,
        shuffle=False,
        fixed_class_order=list(range(n_cls)),
    )


def assert_matrix_close(a, b):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert row_a == pytest.approx(row_b, abs=1e-6)


def accuracy_by_hand(model, exp):
    x = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
    y = torch.tensor([int(exp.dataset[i][1]) for i in range(len(exp.dataset))])
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def make_naive(metrics, loggers, epochs=1, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 6))
    return (
        Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
            train_mb_size=8,
            train_epochs=epochs,
            eval_mb_size=7,  # several eval iterations per experience
            evaluator=EvaluationPlugin(*metrics, loggers=loggers),
        ),
        model,
    )


def test_plugin_matrix_equals_evaluating_by_hand(tmp_path):
    bm = make_benchmark()
    metrics = continual_metrics()
    text = io.StringIO()
    loggers = [
        TextLogger(text),
        InteractiveLogger(),
        CSVLogger(str(tmp_path / "csv")),
        TensorboardLogger(str(tmp_path / "tb")),
    ]
    strategy, model = make_naive(metrics, loggers)
    initial = [accuracy_by_hand(model, e) for e in bm.test_stream]
    strategy.eval(bm.test_stream)
    expected = []
    for exp in bm.train_stream:
        strategy.train(exp)
        expected.append([accuracy_by_hand(model, e) for e in bm.test_stream])
        res = strategy.eval(bm.test_stream)
    R = metrics[0].matrix
    assert_matrix_close(R, expected)
    assert metrics[0].initial == pytest.approx(initial)
    assert 0.0 < max(initial) and min(R[0]) < max(R[0])  # not degenerate
    # Emitted values equal the pure functions of the same matrix.
    key = "{}/eval_phase/test_stream"
    assert torch.allclose(res[key.format("AccuracyMatrix")], torch.tensor(expected))
    assert res[key.format("AverageAccuracy")] == pytest.approx(average_accuracy(R))
    assert res[key.format("LearningAccuracy")] == pytest.approx(learning_accuracy(R))
    assert res[key.format("BWT")] == pytest.approx(bwt(R))
    assert res[key.format("BTI")] == pytest.approx(bti(R))
    assert res[key.format("Forgetting")] == pytest.approx(forgetting(R))
    assert res[key.format("FWT")] == pytest.approx(fwt(R, initial))
    # Every logger accepted the values; the text logger printed them.
    log = text.getvalue()
    assert "AccuracyMatrix/eval_phase/test_stream" in log
    assert "AverageAccuracy/eval_phase/test_stream" in log
    assert (tmp_path / "csv" / "eval_results.csv").exists()
    assert any((tmp_path / "tb").iterdir())


def test_online_subexperiences_fill_the_origin_row():
    bm = make_benchmark()
    metrics = continual_metrics()
    strategy, model = make_naive(metrics, [TextLogger(io.StringIO())])
    trained_exps = []
    expected = []
    for exp in bm.train_stream:
        # Boundaries hidden: the metric must still find the origin experience.
        sub = split_online_stream([exp], experience_size=10, seed=0)
        for s in sub:
            strategy.train(s)
            trained_exps.append(s)
        expected.append([accuracy_by_hand(model, e) for e in bm.test_stream])
        strategy.eval(bm.test_stream)
    assert len(trained_exps) == 3 * 6  # 60 samples per experience, 10 per step
    assert_matrix_close(metrics[0].matrix, expected)
    assert len(metrics[0].matrix) == 3
    assert metrics[0].initial is None  # no eval before training: no FWT
    assert metrics[-1].result() is None


def test_reset_state_dict_and_standalone_summary():
    bm = make_benchmark(n_exp=2)
    R = AccuracyMatrix()
    standalone = AverageAccuracy()  # drives its own private matrix
    strategy, _ = make_naive([R, standalone], [TextLogger(io.StringIO())])
    for exp in bm.train_stream:
        strategy.train(exp)
        strategy.eval(bm.test_stream)
    assert standalone.result() == pytest.approx(average_accuracy(R.matrix))
    assert_matrix_close(standalone.source.matrix, R.matrix)
    state = R.state_dict()
    copy = AccuracyMatrix()
    copy.load_state_dict(state)
    assert copy.matrix == R.matrix
    R.reset()
    assert R.matrix == [] and R.initial is None
    assert R.result().shape == (0, 0)


def test_other_streams_are_not_recorded():
    bm = make_benchmark(n_exp=2)
    metrics = continual_metrics()
    strategy, model = make_naive(metrics, [TextLogger(io.StringIO())])
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream)
    row = list(metrics[0].matrix[0])
    strategy.eval(bm.train_stream)  # training accuracy: a different stream
    assert metrics[0].matrix[0] == row


def test_missing_rows_warn_instead_of_emitting():
    bm = make_benchmark()
    metrics = continual_metrics()
    strategy, _ = make_naive(metrics, [TextLogger(io.StringIO())])
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])  # no eval after experience 0
    with pytest.warns(UserWarning, match="after every training experience"):
        res = strategy.eval(bm.test_stream)
    assert "AverageAccuracy/eval_phase/test_stream" not in res
    assert metrics[0].matrix[0] == [None, None, None]
