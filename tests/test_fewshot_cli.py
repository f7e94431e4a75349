"""``avalanche-meta run maml|reptile --out DIR`` writes the meta-trained model, and
:func:`avalanche_meta.fewshot.load` adapts it on a task built here and predicts it."""

from __future__ import annotations

import json

import pytest
import torch

from avalanche_meta.cli.main import main


@pytest.mark.parametrize("strategy", ["maml", "reptile"])
def test_run_out_writes_a_loadable_fewshot_model(strategy, tmp_path, omniglot_root):
    from avalanche_meta import fewshot

    out = tmp_path / strategy
    argv = [
        "run",
        strategy,
        "--benchmark",
        "omniglot",
        "--data-root",
        str(omniglot_root),
        "--out",
        str(out),
        "--meta-iterations",
        "2",
        "--eval-tasks",
        "2",
        "--no-progress",
        "--no-plots",
        "--no-initial-eval",
        "--model",
        "fc",
    ]
    if strategy == "maml":
        argv += ["--meta-batch-size", "2"]
    assert main(argv) == 0
    assert (out / "fewshot_model.pt").is_file()
    described = json.loads((out / "fewshot_model.json").read_text())
    assert described["info"]["benchmark"] == "omniglot"
    assert json.loads((out / "results.json").read_text())["out_dir"] == str(out)

    learner = fewshot.load(out)
    torch.manual_seed(0)
    # A 3-way 2-shot task with arbitrary labels, built here (28x28 images).
    support_x = torch.rand(6, 1, 28, 28)
    support_y = torch.tensor([7, 7, 3, 3, 11, 11])
    query_x = torch.cat([support_x[::2], support_x[1::2]])
    pred = learner.predict(support_x, support_y, query_x)
    assert pred.shape == (6,)
    assert set(pred.tolist()) <= {3, 7, 11}
    # The loaded weights are the run's: a second load predicts the same.
    again = fewshot.load(out).predict(support_x, support_y, query_x)
    assert torch.equal(pred, again)
