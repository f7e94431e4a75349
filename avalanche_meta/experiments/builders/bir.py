"""Brain-inspired replay: strategy builders and presets (the tables are in
:mod:`avalanche_meta.experiments.tables.bir`).

- ``avalanche-meta run bir|rtf|dgr|dgr-distill|bir-si --benchmark split-mnist
  --scenario class`` (switches as flags: ``--feedback``, ``--conditional``,
  ``--gating``, ``--distillation``, ``--internal omniglot``);
- ``avalanche-meta run xdg --benchmark split-mnist --scenario task`` (Naive + XdG);
- ``avalanche-meta reproduce bir-split-mnist | bir-permuted-mnist | bir-ablation
  [--quick] [--seeds N]``;
- ``avalanche-meta bench bir [--quick]`` lives in
  :mod:`avalanche_meta.experiments.benches.bir`.

Defaults are the paper's split-MNIST protocol (van de Ven et al. 2020; SPEC.md
section 3): 2,000 iterations per task, batch 128, Adam 1e-3 (betas 0.9, 0.999), MLP /
VAE 2 x 400, latent 100, decoder gates switching off 0.8 of the units per class
(the reference's ``dg_prop``; Bernoulli masks), distillation temperature 2, replayed
samples gated by the previous model's soft predictions (``replay_identity``).

BI-R + SI (``bir-si``) uses the reference code's SI
(:class:`avalanche_meta.plugins.si_reference.ReferenceSIPlugin`: importance of the
encoder and classifier only, ``omega = sum(-grad * delta) / (Delta^2 + 0.1)``, penalty
``c * sum(omega * (theta - anchor)^2)``) with its MNIST values ``dg_c = 1`` and
``dg_si_prop = 0.8`` (the reference defines them for permuted MNIST only; it has no
split-MNIST BI-R + SI setting, so split MNIST uses the same).

Internal replay (``--internal omniglot`` or ``digits``): a small conv front-end
(:func:`avalanche_meta.models.conv.small_front_end`) is pre-trained on that other data
(Omniglot's ``images_background_small1`` characters from the data folder, or
scikit-learn's 8x8 digits upsampled) and frozen; the VAE then replays its activations.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, List, Tuple
import torch
import torch.nn.functional as F
from avalanche_meta.experiments.context import RunContext
from avalanche_meta.experiments.builders.avalanche_builtin import (
    COMMON as BUILTIN_COMMON,
    EVAL_MB_SIZE,
    base_kwargs,
    make_model,
    make_optimizer,
    parse_hidden,
)
from avalanche_meta.experiments.registry import Param, register_strategy
from avalanche_meta.utils.validation import (
    check_choice,
    check_non_negative,
    check_positive,
)

_LOG = logging.getLogger(__name__)

# --------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------
BIR_PARAMS: Dict[str, Param] = {
    "lr": (float, 1e-3, "Adam learning rate (model and generator)"),
    "batch_size": (int, 128, "current batch size (the replayed batch is as large)"),
    "iterations": (int, 2000, "training iterations per experience"),
    "hidden": (str, "400,400", "hidden widths of the encoder / classifier"),
    "z_dim": (int, 100, "latent units of the VAE"),
    "feedback": (bool, True, "replay through feedback (the classifier is the VAE)"),
    "conditional": (bool, True, "Gaussian-mixture prior, one mode per class"),
    "gating": (float, 0.8, "proportion of decoder units gated OFF per class (0: off)"),
    "gate_masks": (str, "bernoulli", "bernoulli (reference) or exact gate masks"),
    "replay_identity": (
        str,
        "predicted",
        "class identity of replay for gates/prior: predicted (reference) or generated",
    ),
    "real_gate_labels": (
        str,
        "global",
        "Task-IL gates of real data: global, or task-relative (reference's quirk)",
    ),
    "distillation": (float, 2.0, "soft-target temperature (0: hard labels)"),
    "internal": (str, "none", "none, omniglot or digits: pre-trained conv front-end"),
    "pretrain_iterations": (int, 1000, "pre-training steps of the front-end"),
    "si_c": (float, 0.0, "c of the reference's SI (0: off; BI-R + SI)"),
    "si_epsilon": (float, 0.1, "epsilon of the reference's SI"),
    "samples": (bool, True, "PNG of generated samples per class after each experience"),
}


def _params(**defaults: Any) -> Dict[str, Param]:
    out = dict(BIR_PARAMS)
    for name, value in defaults.items():
        typ, _, help_ = out[name]
        out[name] = (typ, value, help_)
    return out


#: SI's c of the paper's protocols (SPEC.md section 3), by scenario.
SI_C = {"task": 10.0, "class": 0.1, "domain": 10.0}
#: BI-R + SI in the reference's options.py: (dg_c, dg_si_prop). MNIST: its permuted-MNIST
#: values (it has none for split MNIST); CIFAR-100: (1e8, 0.6).
BIR_SI_MNIST = (1.0, 0.8)

_FRONT_CACHE: Dict[Tuple, Any] = {}


def _other_data(
    source: str, shape: Tuple[int, ...]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images of ``source`` (not the benchmark's data), resized to ``shape``."""
    check_choice("internal", source, ("omniglot", "digits"))
    if source == "omniglot":
        from avalanche_meta.benchmarks.omniglot import load_omniglot

        data = load_omniglot("small1", data_root=os.environ.get("AVALANCHE_META_DATA"))
        x, y = data.images, data.targets
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(d.target)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(
            f"internal replay needs image inputs (C, H, W); the benchmark has {shape}."
        )
    x = F.interpolate(x, size=tuple(shape[1:]), mode="bilinear", align_corners=False)
    if shape[0] == 3:
        x = x.repeat(1, 3, 1, 1)
    return x.clamp(0, 1), y.long()


def pretrained_front_end(source: str, shape, iterations: int, device):
    """A small conv front-end pre-trained on ``source`` and frozen (cached per process)."""
    from avalanche_meta.models.conv import pretrain_front_end, small_front_end

    key = (source, tuple(shape), iterations)
    if key not in _FRONT_CACHE:
        x, y = _other_data(source, tuple(shape))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            front = small_front_end(in_channels=shape[0])
            _FRONT_CACHE[key] = pretrain_front_end(
                front, x, y, iterations=iterations, batch_size=128, lr=1e-3, seed=0
            )
    return copy.deepcopy(_FRONT_CACHE[key]).to(device)


def _torch_version() -> Tuple[int, int]:
    """``(major, minor)`` of the installed torch."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


#: Devices whose Adam has a fused kernel from torch 2.4 on (CUDA had it before).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def bir_adam(params, lr: float, betas: Tuple[float, float], device) -> torch.optim.Adam:
    """Adam for the BI-R family: the fused kernel when torch has one for ``device``.

    ``fused=True`` (one kernel over all parameters instead of a loop of element-wise
    operations per tensor) computes the same update with the same ``lr`` and
    ``betas``; only the rounding of the floating-point operations may differ. It is
    used when torch is 2.4 or newer, ``device`` is CPU or CUDA and every parameter is
    a floating-point tensor on it (torch checks that only at the first ``step``, so it
    is checked here); otherwise the usual Adam is built and the reason is logged at
    debug level (logger ``avalanche_meta.experiments.builders.bir``).
    """
    params = list(params)
    dev = torch.device(device).type
    bad = [
        f"{p.dtype} on {p.device.type}"
        for p in params
        if p.device.type != dev or not torch.is_floating_point(p)
    ]
    if _torch_version() < (2, 4):
        reason = f"torch {torch.__version__} < 2.4 has no fused Adam on the CPU"
    elif dev not in FUSED_ADAM_DEVICES:
        reason = f"device {dev!r} is not one of {FUSED_ADAM_DEVICES}"
    elif bad:
        reason = f"fused Adam needs floating-point parameters on {dev}, got {bad[0]}"
    else:
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError) as err:
            reason = f"torch refused fused=True: {err}"
    _LOG.debug("BI-R: non-fused Adam (%s)", reason)
    return torch.optim.Adam(params, lr=lr, betas=betas)


def build_bir(ctx: RunContext, **hp):
    """A :class:`BrainInspiredReplay` from flags (every BI-R name shares it)."""
    from avalanche_meta.models.mlp import MLP
    from avalanche_meta.plugins.samples import GeneratedSamplesPlot
    from avalanche_meta.plugins.si_reference import ReferenceSIPlugin
    from avalanche_meta.strategies.bir import BrainInspiredReplay, replay_vae

    info = ctx.info
    for name in ("batch_size", "iterations", "z_dim", "pretrain_iterations"):
        check_positive(name, hp[name], integer=True)
    check_positive("lr", hp["lr"])
    check_non_negative("distillation", hp["distillation"])
    check_non_negative("si_c", hp["si_c"])
    check_positive("si_epsilon", hp["si_epsilon"])
    check_choice("gate_masks", hp["gate_masks"], ("bernoulli", "exact"))
    check_choice("replay_identity", hp["replay_identity"], ("predicted", "generated"))
    check_choice(
        "real_gate_labels", hp["real_gate_labels"], ("global", "task-relative")
    )
    hidden = parse_hidden(hp["hidden"])
    if not hidden:
        raise ValueError("`hidden` must name at least one hidden layer for BI-R.")
    front = None
    if hp["internal"] != "none":
        front = pretrained_front_end(
            hp["internal"], info.input_shape, hp["pretrain_iterations"], ctx.device
        )
        input_size = front.module.output_size(info.input_shape)
    else:
        input_size = info.input_size
    vae = replay_vae(
        input_size=input_size,
        num_classes=info.num_classes,
        scenario=ctx.scenario,
        feedback=hp["feedback"],
        conditional=hp["conditional"],
        gating=hp["gating"],
        n_tasks=info.n_experiences,
        internal=front is not None,
        hidden_sizes=hidden,
        z_dim=hp["z_dim"],
        output_shape=info.input_shape,
        gate_masks=hp["gate_masks"],
    ).to(ctx.device)
    plugins: List[Any] = []
    clf = None
    if not hp["feedback"]:
        clf = MLP(
            input_size=input_size, hidden_sizes=hidden, num_classes=info.num_classes
        ).to(ctx.device)
    if hp["si_c"]:
        # the reference accumulates SI's importance for the encoder and classifier
        # only (train.py: convE, fcE, classifier), i.e. the whole separate classifier
        si_modules = [vae.encoder, vae.classifier] if hp["feedback"] else [clf]
        plugins.append(
            ReferenceSIPlugin(
                c=hp["si_c"], epsilon=hp["si_epsilon"], modules=si_modules
            )
        )
    if hp["samples"] and ctx.out_dir is not None:
        plugins.append(GeneratedSamplesPlot(ctx.out_dir / "samples"))
    betas = (0.9, 0.999)
    kw = dict(
        scenario=ctx.scenario,
        feedback=hp["feedback"],
        conditional=hp["conditional"],
        gating=hp["gating"],
        internal=front,
        distillation=hp["distillation"] or None,
        replay_identity=hp["replay_identity"],
        real_gate_labels=hp["real_gate_labels"],
        iterations=hp["iterations"],
        train_mb_size=hp["batch_size"],
        eval_mb_size=EVAL_MB_SIZE,
        device=ctx.device,
        evaluator=ctx.evaluator,
        plugins=plugins,
    )
    if hp["feedback"]:
        opt = bir_adam(vae.parameters(), hp["lr"], betas, ctx.device)
        return BrainInspiredReplay(model=vae, optimizer=opt, **kw)
    return BrainInspiredReplay(
        model=clf,
        optimizer=bir_adam(clf.parameters(), hp["lr"], betas, ctx.device),
        generator=vae,
        generator_optimizer=bir_adam(vae.parameters(), hp["lr"], betas, ctx.device),
        **kw,
    )


_NAMES = {
    "bir": ("brain-inspired replay: feedback, conditional, gating, distillation", {}),
    "rtf": (
        "replay through feedback only (BI-R preset RtF)",
        dict(conditional=False, gating=0.0, distillation=0.0),
    ),
    "dgr": (
        "deep generative replay: separate VAE, hard labels (BI-R preset DGR)",
        dict(feedback=False, conditional=False, gating=0.0, distillation=0.0),
    ),
    "dgr-distill": (
        "deep generative replay with distillation (T=2)",
        dict(feedback=False, conditional=False, gating=0.0, distillation=2.0),
    ),
}

for _name, (_help, _defaults) in _NAMES.items():
    register_strategy(_name, help=_help, params=_params(**_defaults))(build_bir)


@register_strategy(
    "bir-si",
    help="brain-inspired replay + the reference's SI (c = dg_c = 1, gates 0.8 "
    "off = dg_si_prop; CIFAR-100 values in the reference: 1e8, 0.6)",
    params=_params(si_c=BIR_SI_MNIST[0], gating=BIR_SI_MNIST[1]),
)
def build_bir_si(ctx: RunContext, **hp):
    """BI-R with the reference code's SI on the encoder and classifier."""
    if hp["si_c"] <= 0:
        raise ValueError("bir-si needs si_c > 0 (use `bir` without SI).")
    return build_bir(ctx, **hp)


@register_strategy(
    "xdg",
    help="XdG: context-dependent gating of hidden units per task (Naive + XdG, Task-IL only)",
    scenarios=("task",),
    params={
        **BUILTIN_COMMON,
        "gating_prop": (float, 0.9, "proportion of hidden units gated off per task"),
    },
)
def build_xdg(ctx: RunContext, **hp):
    """Avalanche's Naive on the multi-head MLP with the :class:`XdG` plugin."""
    from avalanche.training.supervised import Naive

    from avalanche_meta.plugins.xdg import XdG

    model = make_model(ctx, hp.pop("hidden"))
    opt = make_optimizer(model, hp.pop("optimizer"), hp.pop("lr"))
    kw = base_kwargs(ctx, hp.pop("epochs"), hp.pop("batch_size"))
    xdg = XdG(
        model,
        n_tasks=ctx.info.n_experiences,
        gating_prop=hp.pop("gating_prop"),
        scenario=ctx.scenario,
    )
    return Naive(model=model, optimizer=opt, plugins=[xdg], **kw)
