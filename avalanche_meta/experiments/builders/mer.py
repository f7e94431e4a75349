"""MER and ER: strategy builders and presets (the table is
:mod:`avalanche_meta.experiments.tables.mer`, the bench
:mod:`avalanche_meta.experiments.benches.mer`).

- ``avalanche-meta run mer --benchmark rotated-mnist --preset rotations-200``
- ``avalanche-meta reproduce mer-mnist [--quick] [--seeds N]``
- ``avalanche-meta bench mer [--quick]``

Presets are the settings of the original code's runs (``mer_examples.sh`` of
mattriemer/MER; SPEC.md section 1) for MNIST Rotations / Permutations / Many
Permutations at 5120, 500 and 200 memories, with ``convention="original"``: a batch
is the current example plus ``k`` memories (``replay_batch_size`` = the code's
``--replay_batch_size``), reservoir draw ``randint(0, age)``.

- MER Algorithm 1 (``<protocol>-<mem>``): ``lr`` (alpha), ``beta``, ``gamma``, ``k``,
  ``s``.
- MER Algorithm 6 (``alg6-<protocol>-<mem>``): ``lr``, ``gamma``, ``k``; ``s = 1``
  (the code's default ``--batches_per_example``, which its Algorithm 6 runs do not
  set); Reptile with ``gamma`` after every batch, as the code.
- MER Algorithm 7 (``alg7-<protocol>-<mem>``): ``lr``, ``gamma``, ``k``, ``s``.
- ER (Algorithm 4, ``eralg4.py``, same preset names as Algorithm 1): lr 0.1 and
  the code's own ``k`` per protocol and memory.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple
from avalanche_meta.experiments.context import RunContext
from avalanche_meta.experiments.registry import Param, register_strategy

#: (lr, beta, gamma, k, s) of the paper, by protocol and memory size [V].
PAPER_HP: Dict[Tuple[str, int], Tuple[float, float, float, int, int]] = {
    ("rotations", 5120): (0.03, 0.03, 1.0, 100, 10),
    ("permutations", 5120): (0.03, 0.03, 1.0, 100, 10),
    ("many", 5120): (0.1, 0.01, 1.0, 5, 10),
    ("rotations", 500): (0.1, 0.01, 1.0, 10, 10),
    ("permutations", 500): (0.03, 0.03, 1.0, 25, 10),
    ("many", 500): (0.03, 0.03, 1.0, 5, 10),
    ("rotations", 200): (0.1, 0.01, 1.0, 10, 5),
    ("permutations", 200): (0.03, 0.03, 1.0, 10, 10),
}

#: MER Algorithm 6 in the original code (lr, gamma, k) [V: mer_examples.sh].
ALG6_HP: Dict[Tuple[str, int], Tuple[float, float, int]] = {
    ("rotations", 5120): (0.03, 0.1, 100),
    ("rotations", 500): (0.1, 0.03, 10),
    ("rotations", 200): (0.1, 0.03, 25),
    ("permutations", 5120): (0.03, 0.1, 50),
    ("permutations", 500): (0.03, 0.3, 10),
    ("permutations", 200): (0.1, 0.03, 5),
    ("many", 5120): (0.03, 0.1, 25),
    ("many", 500): (0.1, 0.03, 5),
}

#: MER Algorithm 7 in the original code (lr, gamma, k, s) [V: mer_examples.sh].
ALG7_HP: Dict[Tuple[str, int], Tuple[float, float, int, int]] = {
    ("rotations", 5120): (0.03, 0.03, 100, 5),
    ("rotations", 500): (0.03, 0.03, 50, 5),
    ("rotations", 200): (0.03, 0.03, 50, 5),
    ("permutations", 5120): (0.01, 0.1, 100, 10),
    ("permutations", 500): (0.01, 0.1, 25, 10),
    ("permutations", 200): (0.03, 0.1, 5, 2),
    ("many", 5120): (0.03, 0.03, 100, 10),
    ("many", 500): (0.03, 0.03, 5, 10),
}

#: ER (Algorithm 4, eralg4.py): lr 0.1 and its own k (memories per batch) [V].
ER_LR = 0.1
ER_K: Dict[Tuple[str, int], int] = {
    ("rotations", 5120): 25,
    ("rotations", 500): 5,
    ("rotations", 200): 10,
    ("permutations", 5120): 25,
    ("permutations", 500): 10,
    ("permutations", 200): 10,
    ("many", 5120): 25,
    ("many", 500): 25,
}

MER_PRESETS: Dict[str, Dict[str, Any]] = {
    f"{protocol}-{mem}": {
        "mem_size": mem,
        "lr": lr,
        "beta": beta,
        "gamma": gamma,
        "replay_batch_size": k,
        "batches_per_example": s,
        "variant": "alg1",
        "convention": "original",
    }
    for (protocol, mem), (lr, beta, gamma, k, s) in PAPER_HP.items()
}
MER_PRESETS.update(
    {
        f"alg6-{protocol}-{mem}": {
            "mem_size": mem,
            "lr": lr,
            "gamma": gamma,
            "replay_batch_size": k,
            "batches_per_example": 1,
            "variant": "alg6",
            "convention": "original",
        }
        for (protocol, mem), (lr, gamma, k) in ALG6_HP.items()
    }
)
MER_PRESETS.update(
    {
        f"alg7-{protocol}-{mem}": {
            "mem_size": mem,
            "lr": lr,
            "gamma": gamma,
            "replay_batch_size": k,
            "batches_per_example": s,
            "variant": "alg7",
            "convention": "original",
        }
        for (protocol, mem), (lr, gamma, k, s) in ALG7_HP.items()
    }
)

ER_PRESETS: Dict[str, Dict[str, Any]] = {
    f"{protocol}-{mem}": {
        "mem_size": mem,
        "lr": ER_LR,
        "replay_batch_size": k,
        "convention": "original",
    }
    for (protocol, mem), k in ER_K.items()
}

_COMMON: Dict[str, Param] = {
    "lr": (float, 0.03, "learning rate of the (inner) plain SGD, alpha"),
    "mem_size": (int, 5120, "reservoir memory size"),
    "hidden": (str, "100,100", "hidden layer widths, comma separated"),
    "multihead": (bool, False, "Task-IL: one Avalanche head per task (else masks)"),
    "online_batch": (int, 1, "examples per step on non-online benchmarks"),
    "convention": (
        str,
        "original",
        "original (the MER code: batch = current + k memories) or paper (k in all)",
    ),
}

MER_PARAMS: Dict[str, Param] = {
    **_COMMON,
    "replay_batch_size": (int, 100, "k: memories per batch (convention original)"),
    "batches_per_example": (int, 10, "s: batches per incoming example"),
    "beta": (float, 0.03, "within-batch Reptile rate (Algorithm 1)"),
    "gamma": (float, 1.0, "across-batch Reptile rate"),
    "variant": (str, "alg1", "alg1, alg6 or alg7"),
    "fast_path": (bool, True, "compiled fast path for MLPs"),
}

ER_PARAMS: Dict[str, Param] = {
    **_COMMON,
    "replay_batch_size": (int, 10, "k: memories per batch (convention original)"),
}

EVAL_MB_SIZE = 512


def _model(ctx: RunContext, hidden: str, multihead: bool):
    from avalanche_meta.experiments.builders.avalanche_builtin import parse_hidden

    if multihead and ctx.scenario != "task":
        raise ValueError("`multihead` needs the Task-IL scenario (--scenario task).")
    return ctx.default_model(hidden_sizes=parse_hidden(hidden), multihead=multihead)


@register_strategy(
    "mer",
    help="Meta-Experience Replay, Riemer et al. 2019, Algorithm 1 (6, 7), per-example reservoir",
    online=True,
    online_batch=1,
    params=MER_PARAMS,
    presets=MER_PRESETS,
)
def build_mer(ctx: RunContext, **hp):
    from avalanche_meta.strategies.mer import MER

    model = _model(ctx, hp.pop("hidden"), hp.pop("multihead"))
    hp.pop("online_batch")
    variant = hp.pop("variant")
    beta = hp.pop("beta")
    return MER(
        model=model,
        variant=variant,
        beta=beta if variant == "alg1" else None,
        scenario=ctx.scenario,
        num_classes=ctx.info.num_classes,
        seed=ctx.seed,
        eval_mb_size=EVAL_MB_SIZE,
        device=ctx.device,
        evaluator=ctx.evaluator,
        **hp,
    )


@register_strategy(
    "er",
    help="experience replay with a per-example reservoir memory (MER's ER baseline)",
    online=True,
    online_batch=1,
    params=ER_PARAMS,
    presets=ER_PRESETS,
)
def build_er(ctx: RunContext, **hp):
    from avalanche_meta.strategies.er import ER

    model = _model(ctx, hp.pop("hidden"), hp.pop("multihead"))
    hp.pop("online_batch")
    return ER(
        model=model,
        scenario=ctx.scenario,
        num_classes=ctx.info.num_classes,
        seed=ctx.seed,
        eval_mb_size=EVAL_MB_SIZE,
        device=ctx.device,
        evaluator=ctx.evaluator,
        **hp,
    )
