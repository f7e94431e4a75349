"""Avalanche's own strategies as baselines: their builders (``avalanche-meta run NAME``).

Registered names: ``naive``, ``joint``, ``replay``, ``ewc``, ``si``, ``lwf``, ``gem``,
``agem``, ``generative-replay``, ``lamaml`` and ``avalanche-mer``. Each builder makes
the model (multi-head :class:`~avalanche_meta.models.mlp.MultiHeadMLP` in Task-IL, one
head over every class otherwise, as Avalanche's own baselines do: no masking of
unseen classes) and the optimizer, and hands Avalanche's class the run's evaluator.

Common hyper-parameters and their defaults: ``lr`` 1e-3 with ``optimizer`` ``adam``
(the split-MNIST protocol of van de Ven et al.), ``epochs`` 10, ``batch_size`` 32,
``hidden`` ``"400,400"`` (the split-MNIST MLP). The epochs and batch size are chosen
so that ``compare naive replay ewc si lwf agem --benchmark split-digits --seeds 3``
finishes in minutes on two CPU cores; the papers' iteration counts are the
reproductions' business. The meta-learning baselines (``lamaml``,
``avalanche-mer``) default to SGD and small batches, as in their papers.
"""

from __future__ import annotations

import io
from typing import Any, Dict, Tuple
import torch
from torch import nn
from avalanche_meta.experiments.context import RunContext
from avalanche_meta.experiments.registry import Param, register_strategy
from avalanche_meta.utils.validation import check_choice, check_positive

#: Evaluation mini-batch for every built-in (evaluation has no gradient: big is fast).
EVAL_MB_SIZE = 512

COMMON: Dict[str, Param] = {
    "lr": (float, 1e-3, "learning rate"),
    "optimizer": (str, "adam", "optimizer: adam or sgd"),
    "epochs": (int, 10, "passes over each experience"),
    "batch_size": (int, 32, "training mini-batch size"),
    "hidden": (str, "400,400", "hidden layer widths, comma separated"),
}


def _params(**extra: Param) -> Dict[str, Param]:
    out = dict(COMMON)
    out.update(extra)
    return out


def parse_hidden(hidden: str) -> Tuple[int, ...]:
    """``"400,400"`` -> ``(400, 400)``; an empty string is a linear model."""
    try:
        sizes = tuple(int(h) for h in str(hidden).replace(" ", "").split(",") if h)
    except ValueError:
        sizes = (-1,)
    if any(h < 1 for h in sizes):
        raise ValueError(
            f"`hidden` must be comma-separated positive widths such as '400,400', "
            f"got {hidden!r}."
        )
    return sizes


def make_model(ctx: RunContext, hidden: str) -> nn.Module:
    """Multi-head MLP in Task-IL, one head over ``info.num_classes`` otherwise."""
    return ctx.default_model(
        hidden_sizes=parse_hidden(hidden), multihead=ctx.scenario == "task"
    ).to(ctx.device)


def make_optimizer(
    model: nn.Module, optimizer: str, lr: float
) -> torch.optim.Optimizer:
    """Adam or plain SGD over the model's parameters."""
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    check_positive("lr", lr)
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr)


def base_kwargs(ctx: RunContext, epochs: int, batch_size: int) -> Dict[str, Any]:
    """The keyword arguments every Avalanche strategy takes."""
    check_positive("epochs", epochs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    return dict(
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch_size,
        train_epochs=epochs,
        eval_mb_size=EVAL_MB_SIZE,
        device=ctx.device,
        evaluator=ctx.evaluator,
    )


def _common(ctx: RunContext, hp: Dict[str, Any]):
    model = make_model(ctx, hp.pop("hidden"))
    opt = make_optimizer(model, hp.pop("optimizer"), hp.pop("lr"))
    kw = base_kwargs(ctx, hp.pop("epochs"), hp.pop("batch_size"))
    return model, opt, kw


# --------------------------------------------------------------------------------
@register_strategy(
    "naive",
    help="fine-tuning, no protection against forgetting (Avalanche Naive)",
    params=_params(),
)
def build_naive(ctx: RunContext, **hp):
    from avalanche.training.supervised import Naive

    model, opt, kw = _common(ctx, hp)
    return Naive(model=model, optimizer=opt, **kw)


def fit_joint(ctx: RunContext, strategy, info) -> None:
    """Train once on the union of every experience, then evaluate once.

    The accuracy matrix has a single row (there is no "after experience i"); the
    average accuracy is the mean of that row, and LA, BWT, forgetting and FWT are
    not defined (null in results.json).
    """
    strategy.train(info.benchmark.train_stream)
    strategy.eval(info.benchmark.test_stream)


@register_strategy(
    "joint",
    help="offline upper bound: one model trained on all experiences at once (Avalanche JointTraining)",
    params=_params(),
    fit=fit_joint,
)
def build_joint(ctx: RunContext, **hp):
    from avalanche.training.supervised import JointTraining

    hp_opt = (hp["optimizer"], hp["lr"])
    model, opt, kw = _common(ctx, hp)
    if ctx.scenario == "task":
        # Avalanche 0.6's JointTraining adapts a dynamic model only to the
        # experiences it trains on, so an eval before training (or of a task the
        # model has no head for) meets a multi-head model with no output units.
        # Adapting it to every experience here, before the optimizer is made,
        # creates every head up front.
        from avalanche.models.dynamic_modules import avalanche_model_adaptation

        model.train()
        for exp in ctx.info.benchmark.train_stream:
            avalanche_model_adaptation(model, exp)
        opt = make_optimizer(model, hp_opt[0], hp_opt[1])
    return JointTraining(model=model, optimizer=opt, **kw)


def _quiet_experience_balanced_buffer(mem_size: int):
    """Avalanche's ``ExperienceBalancedBuffer`` whose ``update`` calls ``post_adapt``
    directly, as the deprecated base method does, without its deprecation warning:
    Avalanche's ``@deprecated`` resets the warning filters on every call, so the
    warning would be printed after every experience of every run."""
    from avalanche.training.storage_policy import ExperienceBalancedBuffer

    class ExperienceBalancedBufferNoWarning(ExperienceBalancedBuffer):
        def update(self, strategy, **kwargs):
            self.post_adapt(strategy, strategy.experience)

    return ExperienceBalancedBufferNoWarning(max_size=mem_size, adaptive_size=True)


@register_strategy(
    "replay",
    help="experience replay with an experience-balanced buffer (Avalanche Replay)",
    params=_params(mem_size=(int, 200, "number of stored examples")),
)
def build_replay(ctx: RunContext, **hp):
    """Avalanche's ``Replay``, which is ``Naive`` plus ``ReplayPlugin(mem_size)``,
    built as such so that the buffer's deprecation warning stays quiet."""
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.supervised import Naive

    mem_size = hp.pop("mem_size")
    check_positive("mem_size", mem_size, integer=True)
    model, opt, kw = _common(ctx, hp)
    plugin = ReplayPlugin(
        mem_size=mem_size, storage_policy=_quiet_experience_balanced_buffer(mem_size)
    )
    return Naive(model=model, optimizer=opt, plugins=[plugin], **kw)


@register_strategy(
    "ewc",
    help="elastic weight consolidation (Avalanche EWC)",
    params=_params(
        ewc_lambda=(float, 1e4, "weight of the quadratic penalty"),
        mode=(str, "separate", "separate (one penalty per task) or online"),
        decay_factor=(float, None, "importance decay, required with mode online"),
    ),
)
def build_ewc(ctx: RunContext, **hp):
    from avalanche.training.supervised import EWC

    ewc_lambda, mode, decay = (
        hp.pop("ewc_lambda"),
        hp.pop("mode"),
        hp.pop("decay_factor"),
    )
    check_positive("ewc_lambda", ewc_lambda)
    check_choice("mode", mode, ("separate", "online"))
    if mode == "online" and decay is None:
        raise ValueError("`decay_factor` is required with mode online (e.g. 0.9).")
    if mode == "separate" and decay is not None:
        raise ValueError(
            "`decay_factor` is only used with mode online; drop it or set "
            "--mode online."
        )
    model, opt, kw = _common(ctx, hp)
    return EWC(
        model=model,
        optimizer=opt,
        ewc_lambda=ewc_lambda,
        mode=mode,
        decay_factor=decay,
        **kw,
    )


@register_strategy(
    "si",
    help="synaptic intelligence (Avalanche's SI plugin, with its CPU weight snapshots fixed)",
    params=_params(si_lambda=(float, 1.0, "weight of the surrogate-loss penalty")),
)
def build_si(ctx: RunContext, **hp):
    """Naive + SI, which is what Avalanche's ``SynapticIntelligence`` strategy is.

    Avalanche 0.6's own plugin is inert on the CPU (its "old" weights are views of
    the live ones); :mod:`avalanche_meta.plugins.si` is the same plugin with real
    copies, so this baseline does what SI does on every device.
    """
    from avalanche.training.supervised import Naive

    from avalanche_meta.plugins.si import SynapticIntelligencePlugin

    si_lambda = hp.pop("si_lambda")
    check_positive("si_lambda", si_lambda)
    model, opt, kw = _common(ctx, hp)
    plugins = list(kw.pop("plugins", None) or [])
    plugins.append(SynapticIntelligencePlugin(si_lambda=si_lambda))
    return Naive(model=model, optimizer=opt, plugins=plugins, **kw)


@register_strategy(
    "lwf",
    help="learning without forgetting, distillation from the previous model (Avalanche LwF)",
    params=_params(
        alpha=(float, 1.0, "weight of the distillation loss"),
        temperature=(float, 2.0, "softmax temperature of the distillation"),
    ),
)
def build_lwf(ctx: RunContext, **hp):
    from avalanche.training.supervised import LwF

    alpha, temperature = hp.pop("alpha"), hp.pop("temperature")
    check_positive("alpha", alpha)
    check_positive("temperature", temperature)
    model, opt, kw = _common(ctx, hp)
    return LwF(model=model, optimizer=opt, alpha=alpha, temperature=temperature, **kw)


@register_strategy(
    "gem",
    help="gradient episodic memory, needs the quadprog QP solver (Avalanche GEM)",
    params=_params(
        patterns_per_exp=(int, 40, "stored examples per experience"),
        memory_strength=(float, 0.5, "margin added to the projected gradient"),
    ),
)
def build_gem(ctx: RunContext, **hp):
    import qpsolvers
    from avalanche.training.supervised import GEM

    if "quadprog" not in qpsolvers.available_solvers:
        raise ValueError(
            "GEM needs the 'quadprog' QP solver, which is not installed here "
            f"(qpsolvers has: {', '.join(qpsolvers.available_solvers) or 'none'}); "
            "install it with `pip install quadprog`, or use agem."
        )
    ppe, strength = hp.pop("patterns_per_exp"), hp.pop("memory_strength")
    check_positive("patterns_per_exp", ppe, integer=True)
    model, opt, kw = _common(ctx, hp)
    return GEM(
        model=model,
        optimizer=opt,
        patterns_per_exp=ppe,
        memory_strength=strength,
        **kw,
    )


@register_strategy(
    "agem",
    help="averaged gradient episodic memory (Avalanche AGEM)",
    params=_params(
        patterns_per_exp=(int, 40, "stored examples per experience"),
        sample_size=(int, 64, "memory examples drawn for the reference gradient"),
    ),
)
def build_agem(ctx: RunContext, **hp):
    from avalanche.training.supervised import AGEM

    ppe, sample = hp.pop("patterns_per_exp"), hp.pop("sample_size")
    check_positive("patterns_per_exp", ppe, integer=True)
    check_positive("sample_size", sample, integer=True)
    model, opt, kw = _common(ctx, hp)
    return AGEM(
        model=model, optimizer=opt, patterns_per_exp=ppe, sample_size=sample, **kw
    )


MNIST_SHAPE = (1, 28, 28)


@register_strategy(
    "generative-replay",
    help="deep generative replay with Avalanche's MNIST-shaped VAE (Avalanche GenerativeReplay)",
    params=_params(
        generator_lr=(
            float,
            0.01,
            "Adam learning rate of the VAE (Avalanche's default)",
        ),
        latent=(int, 2, "VAE latent units (Avalanche's default nhid=2)"),
    ),
)
def build_generative_replay(ctx: RunContext, **hp):
    """Avalanche's ``GenerativeReplay`` with its own VAE (``MlpVAE``), built here only
    to give it a silent evaluator (the default one prints progress bars)."""
    from avalanche.logging import TextLogger
    from avalanche.models.generator import VAE_loss, MlpVAE
    from avalanche.training.plugins import EvaluationPlugin, GenerativeReplayPlugin
    from avalanche.training.supervised import GenerativeReplay, VAETraining

    shape = tuple(ctx.info.input_shape)
    if shape not in (MNIST_SHAPE, (784,)):
        raise ValueError(
            f"generative-replay uses Avalanche's MlpVAE, which only generates "
            f"1x28x28 (MNIST-shaped) images; benchmark {ctx.info.name!r} has inputs "
            f"of shape {shape}. Use an MNIST benchmark (split-mnist, permuted-mnist, "
            "rotated-mnist)."
        )
    gen_lr, latent = hp.pop("generator_lr"), hp.pop("latent")
    check_positive("generator_lr", gen_lr)
    check_positive("latent", latent, integer=True)
    model, opt, kw = _common(ctx, hp)
    vae = MlpVAE(MNIST_SHAPE, nhid=latent, device=ctx.device)
    generator = VAETraining(
        model=vae,
        optimizer=torch.optim.Adam(vae.parameters(), lr=gen_lr, weight_decay=1e-4),
        criterion=VAE_loss,
        train_mb_size=kw["train_mb_size"],
        train_epochs=kw["train_epochs"],
        eval_mb_size=EVAL_MB_SIZE,
        device=ctx.device,
        plugins=[GenerativeReplayPlugin()],
        evaluator=EvaluationPlugin(loggers=[TextLogger(io.StringIO())]),
    )
    return GenerativeReplay(
        model=model, optimizer=opt, generator_strategy=generator, **kw
    )


class TaskAgnostic(nn.Module):
    """Gives a single-head model the ``forward(x, task_labels)`` signature LaMAML
    calls, ignoring the task labels (Class-IL and Domain-IL)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, task_labels=None) -> torch.Tensor:
        return self.net(x)


@register_strategy(
    "lamaml",
    help="look-ahead MAML (Avalanche lamaml_v2.LaMAML); re-initialises the model",
    params={
        "lr": (float, 0.1, "SGD learning rate (used only with --sync-update)"),
        "epochs": (int, 1, "passes over each experience"),
        "batch_size": (int, 10, "training mini-batch size"),
        "hidden": (str, "100,100", "hidden layer widths, comma separated"),
        "n_inner_updates": (int, 5, "fast-weight steps per batch"),
        "second_order": (bool, True, "differentiate through the inner steps"),
        "grad_clip_norm": (float, 1.0, "gradient clipping norm"),
        "learn_lr": (bool, True, "learn the per-parameter learning rates"),
        "lr_alpha": (float, 0.25, "learning rate of the learning rates"),
        "sync_update": (bool, False, "update the weights with the SGD optimizer"),
        "alpha_init": (float, 0.1, "initial per-parameter learning rate"),
        "max_buffer_size": (int, 200, "memory size"),
        "buffer_mb_size": (int, 10, "memory examples per batch"),
    },
)
def build_lamaml(ctx: RunContext, **hp):
    from avalanche.training.supervised.lamaml_v2 import LaMAML

    net = make_model(ctx, hp.pop("hidden"))
    model = net if ctx.scenario == "task" else TaskAgnostic(net).to(ctx.device)
    opt = make_optimizer(model, "sgd", hp.pop("lr"))
    kw = base_kwargs(ctx, hp.pop("epochs"), hp.pop("batch_size"))
    for name in ("n_inner_updates", "max_buffer_size", "buffer_mb_size"):
        check_positive(name, hp[name], integer=True)
    for name in ("grad_clip_norm", "lr_alpha", "alpha_init"):
        check_positive(name, hp[name])
    return LaMAML(model=model, optimizer=opt, **kw, **hp)


@register_strategy(
    "avalanche-mer",
    help="Avalanche's own MER (buffer updated per experience; see the mer strategy for the paper's)",
    params={
        "lr": (float, 0.03, "SGD learning rate"),
        "epochs": (int, 1, "passes over each experience"),
        "batch_size": (int, 10, "training mini-batch size"),
        "hidden": (str, "100,100", "hidden layer widths, comma separated"),
        "mem_size": (int, 200, "memory size"),
        "batch_size_mem": (int, 10, "memory examples per inner batch"),
        "n_inner_steps": (int, 5, "inner batches per incoming batch"),
        "beta": (float, 0.1, "within-batch Reptile interpolation"),
        "gamma": (float, 0.1, "across-batch Reptile interpolation"),
    },
)
def build_avalanche_mer(ctx: RunContext, **hp):
    from avalanche.training.supervised import MER

    model = make_model(ctx, hp.pop("hidden"))
    opt = make_optimizer(model, "sgd", hp.pop("lr"))
    kw = base_kwargs(ctx, hp.pop("epochs"), hp.pop("batch_size"))
    for name in ("mem_size", "batch_size_mem", "n_inner_steps"):
        check_positive(name, hp[name], integer=True)
    for name in ("beta", "gamma"):
        check_positive(name, hp[name])
    return MER(model=model, optimizer=opt, **kw, **hp)
