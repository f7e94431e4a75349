"""ReservoirMemory: invariants, uniformity (chi-square), exact resume."""

import io
import pickle

import pytest
import torch
from scipy.stats import chisquare

from avalanche_meta.strategies._memory import ReservoirMemory


def _fill(memory: ReservoirMemory, start: int, stop: int) -> None:
    for i in range(start, stop):
        memory.add(torch.tensor([float(i)]), i % 7, i % 3)


def test_fills_in_order_then_keeps_capacity():
    memory = ReservoirMemory(5, seed=0)
    _fill(memory, 0, 3)
    assert len(memory) == 3 and memory.n_seen == 3
    assert memory.x[:3, 0].tolist() == [0.0, 1.0, 2.0]
    _fill(memory, 3, 40)
    assert len(memory) == 5 and memory.n_seen == 40
    # every stored example is consistent: x, y and t belong to the same example
    ids = memory.x[:, 0].long()
    assert torch.equal(memory.y, ids % 7) and torch.equal(memory.t, ids % 3)
    assert len(set(ids.tolist())) == 5


def test_reservoir_keeps_each_example_with_equal_probability():
    n_stream, mem_size, trials = 40, 5, 800
    counts = torch.zeros(n_stream)
    for trial in range(trials):
        memory = ReservoirMemory(mem_size, seed=trial)
        for i in range(n_stream):
            memory.add(torch.tensor(float(i)), 0, 0)
        counts[memory.x.long()] += 1
    assert counts.sum() == trials * mem_size
    # uniform: expected trials * mem_size / n_stream = 100 per example
    _, p_value = chisquare(counts.numpy())
    assert p_value > 0.001, counts
    # a stream-order bias (e.g. the paper code's off-by-one) would show up here
    first_half, second_half = counts[:20].sum(), counts[20:].sum()
    assert abs(first_half - second_half) < 0.1 * counts.sum()


def test_sampling_is_uniform_over_slots_with_replacement():
    memory = ReservoirMemory(10, seed=3)
    _fill(memory, 0, 10)
    idx = memory.sample_indices(50, 40)
    assert idx.shape == (50, 40)
    counts = torch.bincount(idx.flatten(), minlength=10)
    _, p_value = chisquare(counts.numpy())
    assert p_value > 0.001
    xb, yb, tb = memory.sample(3, 4)
    assert xb.shape == (3, 4, 1) and yb.shape == (3, 4) and tb.shape == (3, 4)
    assert torch.equal(yb, xb[..., 0].long() % 7)


def test_state_dict_resume_is_bit_identical():
    a = ReservoirMemory(6, seed=11)
    _fill(a, 0, 20)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ReservoirMemory(6, seed=999)  # different seed, empty: all comes from the state
    b.load_state_dict(torch.load(buf, weights_only=False))
    _fill(a, 20, 60)
    _fill(b, 20, 60)
    assert torch.equal(a.x, b.x) and a.n_seen == b.n_seen == 60
    assert torch.equal(a.sample_indices(2, 5), b.sample_indices(2, 5))
    c = pickle.loads(pickle.dumps(a))
    assert torch.equal(c.sample_indices(2, 5), a.sample_indices(2, 5))


def test_avalanche_views_and_errors():
    memory = ReservoirMemory(4, seed=0)
    _fill(memory, 0, 3)
    assert memory.max_size == 4 and len(memory.buffer) == 3
    x, y, t = memory.buffer[1][:3]
    assert float(x[0]) == 1.0 and int(y) == 1 and int(t) == 1
    with pytest.raises(ValueError, match="shape"):
        memory.add(torch.zeros(2), 0, 0)
    with pytest.raises(ValueError, match="mem_size"):
        ReservoirMemory(0)
    with pytest.raises(ValueError, match="empty"):
        ReservoirMemory(3).sample_indices(1, 1)
    other = ReservoirMemory(5)
    with pytest.raises(ValueError, match="mem_size"):
        other.load_state_dict(memory.state_dict())
