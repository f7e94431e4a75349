"""Non-transductive vs transductive few-shot evaluation of a model trained by
`avalanche-meta run reptile --preset quick` (model.pt), on the same 600 test tasks."""

import json, math, sys, time
import torch

torch.set_num_threads(1)
from avalanche_meta.benchmarks.omniglot import omniglot_fewshot
from avalanche_meta.evaluation.fewshot import dataset_tensors, few_shot_accuracy
from avalanche_meta.utils.quiet_import import import_learn2learn

run_dir, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
l2l = import_learn2learn()
model = l2l.vision.models.OmniglotCNN(output_size=5)
model.load_state_dict(torch.load(f"{run_dir}/model.pt"))
info = omniglot_fewshot(seed=seed)
exp = info.benchmark.test_stream[0]
x, y = dataset_tensors(exp.dataset.eval())
print("test data", tuple(x.shape), "classes", int(y.unique().numel()), flush=True)
common = dict(
    ways=5,
    shots=1,
    num_tasks=600,
    inner_lr=1e-3,
    inner_steps=50,
    optimizer="adam",
    seed=0,
)
out = {}
for name, kw in [
    ("transductive, 15 queries/class", dict(query_shots=15, transductive=True)),
    ("non-transductive, 15 queries/class", dict(query_shots=15, transductive=False)),
    ("transductive, 1 query/class", dict(query_shots=1, transductive=True)),
    ("non-transductive, 1 query/class", dict(query_shots=1, transductive=False)),
]:
    t = time.time()
    r = few_shot_accuracy(model, x, y, **common, **kw)
    out[name] = {
        "mean": r.mean,
        "ci95": r.ci95,
        "accuracies": r.accuracies,
        "seconds": time.time() - t,
    }
    print(f"{name}: {r}  ({time.time() - t:.0f} s)", flush=True)
for q in ("15 queries/class", "1 query/class"):
    a = out[f"transductive, {q}"]["accuracies"]
    b = out[f"non-transductive, {q}"]["accuracies"]
    d = [u - v for u, v in zip(a, b)]
    m = sum(d) / len(d)
    sd = math.sqrt(sum((e - m) ** 2 for e in d) / (len(d) - 1))
    out[f"paired difference, {q}"] = {"mean": m, "ci95": 1.96 * sd / math.sqrt(len(d))}
    print(
        f"transductive - non-transductive ({q}): {100*m:.2f} +- {100*1.96*sd/math.sqrt(len(d)):.2f} points"
    )
json.dump(out, open(f"{run_dir}/measure.json", "w"), indent=1)
