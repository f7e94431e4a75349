"""Strategy builders of the experiments layer (what ``avalanche-meta run`` builds)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint_worker as worker  # noqa: E402

torch.set_num_threads(1)

BIR_FAMILY = ("bir", "rtf", "dgr", "dgr-distill", "bir-si")


def _optimizers(strategy):
    opts = [strategy.optimizer]
    gen_opt = getattr(strategy, "generator_optimizer", None)
    if gen_opt is not None and gen_opt is not strategy.optimizer:
        opts.append(gen_opt)
    return opts


@pytest.mark.parametrize("case", BIR_FAMILY)
def test_bir_family_builds_fused_adam_with_the_protocol_settings(case):
    strategy, _, _, _ = worker.build(case)
    opts = _optimizers(strategy)
    # DGR / DGR + distill: a separate classifier and generator, both on fused Adam.
    assert len(opts) == (2 if case.startswith("dgr") else 1)
    for opt in opts:
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["fused"] is True
        assert opt.param_groups[0]["fused"] is True
        assert opt.defaults["lr"] == 1e-3
        assert opt.defaults["betas"] == (0.9, 0.999)


def test_bir_family_trains_with_fused_adam():
    strategy, spec, info, hp = worker.build("bir")
    before = [p.detach().clone() for p in strategy.model.parameters()]
    worker.train_experience(strategy, spec, info, hp, 0)
    assert strategy.optimizer.param_groups[0]["fused"] is True
    after = list(strategy.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(p).all() for p in after)


def test_bir_adam_falls_back_with_the_reason_logged(monkeypatch, caplog):
    from avalanche_meta.experiments.builders import bir as bir_builders

    params = [torch.nn.Parameter(torch.zeros(3))]
    with caplog.at_level(logging.DEBUG, logger=bir_builders.__name__):
        opt = bir_builders.bir_adam(params, 1e-4, (0.5, 0.9), "meta")
    assert not opt.defaults.get("fused")
    assert opt.defaults["lr"] == 1e-4 and opt.defaults["betas"] == (0.5, 0.9)
    assert "device 'meta'" in caplog.text

    caplog.clear()
    monkeypatch.setattr(torch, "__version__", "2.3.1+cpu")
    with caplog.at_level(logging.DEBUG, logger=bir_builders.__name__):
        opt = bir_builders.bir_adam(params, 1e-3, (0.9, 0.999), "cpu")
    assert not opt.defaults.get("fused")
    assert "torch 2.3.1+cpu < 2.4" in caplog.text

    caplog.clear()
    ints = [torch.zeros(3, dtype=torch.long)]  # torch refuses them at step()
    monkeypatch.setattr(torch, "__version__", "2.14.0")
    with caplog.at_level(logging.DEBUG, logger=bir_builders.__name__):
        opt = bir_builders.bir_adam(ints, 1e-3, (0.9, 0.999), "cpu")
    assert not opt.defaults.get("fused")
    assert "floating-point parameters on cpu, got torch.int64 on cpu" in caplog.text
