"""Reptile quick preset on offline Omniglot, then non-transductive 5-way 1-shot
evaluation (1 query per class, 600 tasks) with a fresh Adam vs the meta-training
Adam's state (continue_adam), on the same tasks."""

import io, json, math, time
import torch

torch.set_num_threads(1)
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin
from avalanche_meta.benchmarks.omniglot import omniglot_fewshot
from avalanche_meta.cli import registry
from avalanche_meta.cli.context import RunContext
from avalanche_meta.cli.runner import resolve_hparams, seed_everything
from avalanche_meta.evaluation.fewshot import dataset_tensors, few_shot_accuracy

registry.load_all()
spec = registry.STRATEGIES["reptile"]
seed_everything(0)
info = omniglot_fewshot(seed=0)
ctx = RunContext(
    info=info,
    scenario="class",
    device=torch.device("cpu"),
    seed=0,
    evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
)
strategy = spec.build(ctx, **resolve_hparams(spec, "quick", {"eval_tasks": 2}))
t = time.time()
strategy.train(info.benchmark.train_stream[0])
print(f"train {time.time() - t:.0f} s", flush=True)
x, y = dataset_tensors(info.benchmark.test_stream[0].dataset.eval())
common = dict(
    ways=5,
    shots=1,
    query_shots=1,
    num_tasks=600,
    inner_lr=1e-3,
    inner_steps=50,
    optimizer="adam",
    transductive=False,
    seed=0,
)
out = {}
for name, state in [
    ("fresh Adam", None),
    ("continued Adam", strategy.optimizer.state_dict()),
]:
    t = time.time()
    r = few_shot_accuracy(strategy.model, x, y, adam_state=state, **common)
    out[name] = {"mean": r.mean, "ci95": r.ci95, "accuracies": r.accuracies}
    print(f"{name}: {r} ({time.time() - t:.0f} s)", flush=True)
d = [
    a - b
    for a, b in zip(
        out["continued Adam"]["accuracies"], out["fresh Adam"]["accuracies"]
    )
]
m = sum(d) / len(d)
sd = math.sqrt(sum((e - m) ** 2 for e in d) / (len(d) - 1))
print(f"continued - fresh: {100*m:.2f} +- {100*1.96*sd/math.sqrt(len(d)):.2f} points")
out["paired difference"] = {"mean": m, "ci95": 1.96 * sd / math.sqrt(len(d))}
json.dump(out, open("measure_adam.json", "w"), indent=1)  # current folder
