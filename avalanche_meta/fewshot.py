"""A meta-trained few-shot model as a tool: save it, load it, adapt it to your own task.

A model meta-trained by :class:`~avalanche_meta.strategies.maml.MAML`,
:class:`~avalanche_meta.strategies.maml.FOMAML`,
:class:`~avalanche_meta.strategies.reptile.Reptile` or
:class:`~avalanche_meta.strategies.transfer.TransferLearning` is kept as two files in a
folder (learn2learn's networks hold lambdas, so ``torch.save(model)`` cannot pickle
them, and a pickle would tie the file to the code's classes):

- ``fewshot_model.pt``: the ``state_dict`` (read back with ``weights_only=True``),
  plus the strategy's Adam state when its evaluation continues that Adam;
- ``fewshot_model.json``: what builds the architecture (an importable factory, e.g.
  ``learn2learn.vision.models:OmniglotCNN``, and its keyword arguments), the
  adaptation rule of the strategy's own evaluation
  (:class:`~avalanche_meta.evaluation.fewshot.FewShotRule`) and a description.

Example (MAML meta-trained on Omniglot, then used on a user's 3-way 2-shot task whose
labels are any integers)::

    from avalanche_meta import fewshot

    fewshot.save(strategy, "runs/maml-omniglot")       # after strategy.train(...)

    learner = fewshot.load("runs/maml-omniglot")         # e.g. in another process
    adapted = learner.adapt(support_x, support_y)       # support_y e.g. [7, 7, 3, 3, 42, 42]
    labels = adapted.predict(query_x)                   # values among {3, 7, 42}
    # or in one call: learner.predict(support_x, support_y, query_x)

The adaptation is the strategy's evaluation rule: MAML / FO-MAML take SGD steps of
their inner learning rate on the support set (10 by default, the paper's test-time
adaptation), Reptile fine-tunes with Adam (50 steps), the transfer baseline gives the
model a new zero-initialised head and fine-tunes it with SGD; a
``FewShotAccuracy`` in the strategy's evaluator sets the rule instead. A loaded model
adapted on a task gives the predictions the strategy's own evaluation gives on that
task.

The architecture is recorded automatically for learn2learn's ``OmniglotCNN`` and
``OmniglotFC`` and Avalanche's ``SimpleMLP``; for any other model pass
``factory="package.module:build_fn"`` (importable, called with ``kwargs``) to
:func:`save`.

Threads: :func:`set_threads` (see
:func:`avalanche_meta.strategies._fewshot.set_threads`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from avalanche_meta.evaluation.fewshot import AdaptedModel, FewShotRule, adapt
from avalanche_meta.strategies._fewshot import (
    ThreadCountWarning,
    set_threads,
)

__all__ = [
    "FewShotLearner",
    "save",
    "load",
    "architecture_of",
    "set_threads",
    "ThreadCountWarning",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "FORMAT",
]

#: the weights file in a saved folder
WEIGHTS_FILE = "fewshot_model.pt"
#: the description file in a saved folder
CONFIG_FILE = "fewshot_model.json"
#: the format tag written in :data:`CONFIG_FILE`
FORMAT = "avalanche-meta-fewshot/1"

PathLike = Union[str, Path]


class FewShotLearner:
    """A (meta-trained) model and the rule that adapts it to a task.

    :param model: the model (left unchanged by :meth:`adapt`).
    :param rule: how it adapts and predicts.
    :param adam_state: the Adam state the fine-tuning starts from (None: a fresh
        Adam; only with ``rule.optimizer="adam"``).
    :param info: a description (method, ways, ...), as saved.
    """

    def __init__(
        self,
        model: nn.Module,
        rule: FewShotRule,
        *,
        adam_state: Optional[dict] = None,
        info: Optional[Dict[str, Any]] = None,
    ):
        if not isinstance(rule, FewShotRule):
            raise ValueError(f"`rule` must be a FewShotRule, got {rule!r}.")
        if adam_state is not None and rule.optimizer != "adam":
            raise ValueError("`adam_state` needs a rule with optimizer='adam'.")
        self.model = model
        self.rule = rule
        self.adam_state = adam_state
        self.info = dict(info or {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "FewShotLearner":
        """Move the model to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        rule: Optional[FewShotRule] = None,
        generator: Optional[torch.Generator] = None,
    ) -> AdaptedModel:
        """A copy of the model adapted on the support set (N-way K-shot, any integer
        labels); see :func:`avalanche_meta.evaluation.fewshot.adapt`."""
        return adapt(
            self.model,
            support_x,
            support_y,
            rule=rule or self.rule,
            generator=generator,
            adam_state=self.adam_state,
        )

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Adapt on the support set and return the predicted label of each query (in
        ``support_y``'s label values)."""
        return self.adapt(support_x, support_y).predict(query_x)


# ------------------------------------------------------------------ architecture
def _factory_path(factory: Union[str, Callable]) -> str:
    if isinstance(factory, str):
        path = factory
    else:
        path = f"{factory.__module__}:{factory.__qualname__}"
    _resolve(path)  # fail now, not at load time
    return path


def _resolve(path: str) -> Callable:
    if ":" not in path:
        raise ValueError(
            f"factory {path!r} must be 'package.module:name' (an importable "
            "callable that builds the model)."
        )
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"factory {path!r}: {module} has no {qualname}.")
    if not callable(obj):
        raise ValueError(f"factory {path!r} is not callable.")
    return obj


def architecture_of(model: nn.Module) -> Tuple[str, Dict[str, Any]]:
    """``(factory, kwargs)`` that rebuild ``model``'s architecture, for the models
    this module knows (learn2learn's ``OmniglotCNN`` / ``OmniglotFC``, Avalanche's
    ``SimpleMLP``); other models raise with what to pass to :func:`save`."""
    cls = type(model)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__name__ == "OmniglotCNN" and cls.__module__.startswith("learn2learn"):
        return "learn2learn.vision.models:OmniglotCNN", {
            "output_size": model.classifier.out_features,
            "hidden_size": int(model.hidden_size),
            "layers": len(model.base),
        }
    if cls.__name__ == "OmniglotFC" and cls.__module__.startswith("learn2learn"):
        blocks = [m for m in model.features[1]]
        return "learn2learn.vision.models:OmniglotFC", {
            "input_size": int(model.input_size),
            "output_size": model.classifier.out_features,
            "sizes": [b.linear.out_features for b in blocks],
        }
    if cls.__name__ == "SimpleMLP" and cls.__module__.startswith("avalanche"):
        linears = [m for m in model.features.modules() if isinstance(m, nn.Linear)]
        drops = [m for m in model.features.modules() if isinstance(m, nn.Dropout)]
        return "avalanche.models:SimpleMLP", {
            "num_classes": model.classifier.out_features,
            "input_size": int(model._input_size),
            "hidden_size": linears[0].out_features,
            "hidden_layers": len(linears),
            "drop_rate": float(drops[0].p) if drops else 0.0,
        }
    raise ValueError(
        f"save() does not know how to rebuild a {name}: pass "
        "factory='package.module:build_fn' and kwargs={...} (an importable callable "
        "that returns the same architecture), e.g. factory=MyNet, kwargs={'width': "
        "64}."
    )


# ------------------------------------------------------------------ save / load
def save(
    obj,
    folder: PathLike,
    *,
    rule: Optional[FewShotRule] = None,
    factory: Union[str, Callable, None] = None,
    kwargs: Optional[Dict[str, Any]] = None,
    info: Optional[Dict[str, Any]] = None,
) -> Path:
    """Save a meta-trained model for :func:`load` in ``folder`` (created).

    :param obj: a few-shot strategy (MAML, FOMAML, Reptile, TransferLearning; its
        model, the rule of its evaluation and, when that evaluation continues the
        strategy's Adam, the Adam state) or an ``nn.Module`` (then ``rule`` is its
        adaptation rule, default :class:`FewShotRule`\\ ()).
    :param rule: overrides the strategy's rule.
    :param factory: what builds the architecture (``"module:name"`` or an importable
        callable), called as ``factory(**kwargs)``; None: :func:`architecture_of`.
    :param kwargs: the factory's keyword arguments (JSON-serialisable).
    :param info: extra description stored in the JSON.
    :return: the folder.
    """
    adam_state = None
    description: Dict[str, Any] = {}
    if isinstance(obj, nn.Module):
        model = obj
        rule = rule or FewShotRule()
    elif hasattr(obj, "evaluation_settings") and isinstance(
        getattr(obj, "model", None), nn.Module
    ):
        model = obj.model
        settings = obj.evaluation_settings()
        if rule is None:
            rule = settings.rule
            if settings.continue_adam:
                adam_state = obj.optimizer.state_dict()
        description = {
            "method": type(obj).__name__,
            "eval_ways": settings.ways,
            "eval_shots": settings.shots,
        }
        for attr in ("ways", "shots", "inner_lr", "inner_steps", "first_order"):
            if hasattr(obj, attr):
                description[attr] = getattr(obj, attr)
    else:
        raise ValueError(
            "save() takes a few-shot strategy (MAML, FOMAML, Reptile, "
            f"TransferLearning) or an nn.Module, got {type(obj).__name__}."
        )
    if not isinstance(rule, FewShotRule):
        raise ValueError(f"`rule` must be a FewShotRule, got {rule!r}.")
    if factory is None:
        if kwargs is not None:
            raise ValueError("`kwargs` needs `factory`.")
        factory_path, factory_kwargs = architecture_of(model)
    else:
        factory_path, factory_kwargs = _factory_path(factory), dict(kwargs or {})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # the files must load: rebuild the architecture now and load the weights
    try:
        _resolve(factory_path)(**factory_kwargs).load_state_dict(state)
    except Exception as err:  # a wrong factory / kwargs: say so now
        raise ValueError(
            f"{factory_path}(**{factory_kwargs}) does not rebuild this model "
            f"({type(err).__name__}: {err}); pass the right `factory` / `kwargs`."
        ) from err
    config = {
        "format": FORMAT,
        "factory": factory_path,
        "kwargs": factory_kwargs,
        "rule": rule.to_dict(),
        "continue_adam": adam_state is not None,
        "info": {**description, **(info or {})},
    }
    text = json.dumps(config, indent=2) + "\n"  # JSON-serialisable, before writing
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model": state}
    if adam_state is not None:
        payload["adam_state"] = adam_state
    torch.save(payload, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(text)
    return folder


def load(
    folder: PathLike, *, device: Union[str, torch.device] = "cpu"
) -> FewShotLearner:
    """The :class:`FewShotLearner` saved by :func:`save` in ``folder`` (or the path of
    its ``fewshot_model.json``), on ``device``."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{path} has no {CONFIG_FILE} + {WEIGHTS_FILE}; save a model there with "
            "avalanche_meta.fewshot.save(strategy, folder) (the command line's `run "
            "maml|fomaml|reptile|transfer --out DIR` writes them in DIR)."
        )
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}."
        )
    model = _resolve(config["factory"])(**config["kwargs"])
    payload = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(payload["model"])
    model.to(device)
    adam_state = payload.get("adam_state")
    if adam_state is not None:
        adam_state = _move_state(adam_state, torch.device(device))
    return FewShotLearner(
        model,
        FewShotRule.from_dict(config["rule"]),
        adam_state=adam_state,
        info=config.get("info"),
    )


def _move_state(state, device):
    if isinstance(state, Tensor):
        return state.to(device) if state.dim() > 0 else state
    if isinstance(state, dict):
        return {k: _move_state(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_move_state(v, device) for v in state]
    return state
