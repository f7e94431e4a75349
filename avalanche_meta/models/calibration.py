"""Calibrated layers and the pieces of neuron calibration (NCCL, Yin, Yang, Li, NeurIPS 2021).

A calibrated layer keeps the base parameters ``theta`` of an ordinary layer (weight,
bias) and adds calibration parameters:

- weight calibration (WCM), ``psi``: ``theta~ = tile(psi) * theta``. Linear layers:
  ``psi`` has shape ``(O,)``, one scale per output unit, tiled over the inputs.
  Convolutions: ``psi`` has shape ``(O, I / groups, 1, 1)``, one scale per
  (output, input) channel pair, tiled over the kernel. WCM also brings a calibration
  bias ``psi_bias`` (see below).
- feature calibration (FCM), ``lam`` (the paper's ``lambda``): one scale per output
  unit / channel applied to the layer's output (``scalar_fcm=True``: one scale for
  the whole layer, e.g. a single logit temperature on the output layer).

Where FCM acts relative to batch norm (``fcm_position`` of :func:`calibrate`). The
paper's layer is ``act(BN(Omega_lambda(F) (+) F))``: the scale comes *before* the
batch norm, and that is the default (``"before_bn"``), for fidelity. In training
mode a batch norm normalises each channel by its batch statistics, so
``BN(lam * h) = BN(h)`` up to BN's ``eps``: a per-channel FCM before a batch norm is
cancelled and gets almost no gradient (measured on a conv + BN block: ``|dL/dlam|``
about 1e-3 against ``|dL/dpsi|`` about 25). On the reduced ResNet-18, where every
convolution feeds a batch norm, FCM is then inert by construction. ``"after_bn"``
moves the scale after the batch norm that directly follows the layer
(:class:`BatchNormFeatureScale`: ``lam * BN(h)``), where it is not cancelled; layers
without a following batch norm keep FCM on their output either way.

On a linear layer WCM and FCM are the same per-output scale: ``lam * (psi * Wx + b +
psi_bias)`` depends on ``psi`` and ``lam`` only through their product (and the bias
offset ``psi_bias`` already spans ``lam * b``). :func:`calibrate` therefore gives a
linear layer that has both only ``psi`` and ``psi_bias`` (``merge_linear_fcm=True``,
the default): the paper's pair is an over-parametrisation of one scale, whose only
effects are a doubled effective step size at initialisation (the product of two
parameters moves by ``(psi^2 + lam^2) g`` per SGD step) and that term (a) of the
calibration loss, which reads ``theta~ = psi * theta``, never reaches ``lam``.
``merge_linear_fcm=False`` keeps the literal pair. Convolutions keep both: their
``psi`` is per (output, input) channel pair, ``lam`` per output channel.

How the calibrated output is combined with the uncalibrated one (``combine``). The
paper's Eq. 4 writes ``Omega_lambda(F) (+) F`` (an addition), the paper's reading code
multiplies. Both are offered, and both are the identity at initialisation:

- ``"multiply"`` (default, the reading code): ``h' = lam * h``, ``lam`` starts at 1;
- ``"add"`` (Eq. 4): ``h' = h + lam * h``, ``lam`` starts at 0.

The two are the same parametrisation shifted by a constant (``1 + lam`` vs ``lam``,
with the same gradient): under the plain SGD of the calibration update (no momentum,
no weight decay) they give identical trajectories, up to rounding. They would differ
only under weight decay (which pulls ``lam`` towards 0, i.e. towards the identity in
``"add"`` mode and towards a zero output in ``"multiply"`` mode).

Calibration bias: the paper lets a calibration bias replace the layer bias,
initialised to the base bias. We keep the base bias in ``theta`` (so the inner loop,
which only updates ``theta``, still learns it) and parametrise the calibration bias as
an offset ``psi_bias`` initialised to 0: the calibrated bias is ``b + psi_bias``, which
equals the paper's replacement bias at initialisation and spans the same values.

Forward passes. Without autograd (evaluation under ``torch.no_grad()``), a
calibrated layer folds its calibration into one weight and bias (``lam * theta~``,
``lam * b~``; cached until a parameter changes) and runs exactly one plain kernel:
the calibrated model then costs what the plain one does. With autograd, a
convolution materialises ``theta~ = psi * theta`` and calls the plain layer's kernel
with it and the calibrated bias. A linear layer does not form ``psi * W``: since
``psi`` scales whole rows, it computes ``W x`` with the plain kernel and then
``psi * (W x) + b + psi_bias`` (``addcmul``), then the FCM scale; the result equals
the paper's formula up to rounding (the tests check ``allclose``, and equality at
initialisation, where every scale is 1).

This module also holds the maths of the calibration update, as plain functions used
by both :class:`avalanche_meta.strategies.NeuronCalibration` and
:class:`avalanche_meta.plugins.CalibrationPlugin`: :func:`fisher_importance`,
:func:`consolidation_loss`, :func:`distillation_kl`, and the episodic memory
:class:`CalibrationMemory` that stores the logits produced at storage time.

Example::

    from avalanche_meta.models import MLP, calibrate, base_parameters
    model = calibrate(MLP(input_size=784, hidden_sizes=(100, 100), num_classes=10))
    optimizer = torch.optim.SGD(base_parameters(model), lr=0.1)
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from avalanche_meta.models.resnet import BasicBlock
from avalanche_meta.utils.scenario import MASK_VALUE
from avalanche_meta.utils.validation import check_choice, check_positive

COMBINE_MODES = ("multiply", "add")

#: Where feature calibration acts relative to a following batch norm.
FCM_POSITIONS = ("before_bn", "after_bn")

#: Which layers :func:`calibrate` converts: all, all but the output layer (the last
#: ``nn.Linear``), or the output layer only.
LAYER_SETS = ("all", "hidden", "output")

#: Names of the calibration parameters inside a calibrated layer.
CALIBRATION_NAMES = ("psi", "psi_bias", "lam")

#: Lower bound on ``|psi|`` when dividing by it (gradients w.r.t. ``theta~``, Fisher).
PSI_EPS = 1e-3


class _Calibrated(nn.Module):
    """Shared part of the calibrated layers: creation of psi / psi_bias / lam."""

    weight: nn.Parameter
    bias: Optional[nn.Parameter]

    def _init_calibration(
        self,
        psi_shape: Tuple[int, ...],
        out: int,
        wcm: bool,
        fcm: bool,
        combine: str,
        scalar_fcm: bool = False,
    ) -> None:
        if not (wcm or fcm):
            raise ValueError(
                "a calibrated layer needs weight calibration (`wcm=True`), feature "
                "calibration (`fcm=True`) or both; got neither."
            )
        check_choice("combine", combine, COMBINE_MODES)
        self.wcm, self.fcm, self.combine = bool(wcm), bool(fcm), combine
        dev, dt = self.weight.device, self.weight.dtype
        if wcm:
            self.psi = nn.Parameter(torch.ones(psi_shape, device=dev, dtype=dt))
            if self.bias is not None:
                self.psi_bias = nn.Parameter(torch.zeros(out, device=dev, dtype=dt))
            else:
                self.register_parameter("psi_bias", None)
        else:
            self.register_parameter("psi", None)
            self.register_parameter("psi_bias", None)
        if fcm:
            start = 1.0 if combine == "multiply" else 0.0
            n = 1 if scalar_fcm else out
            self.lam = nn.Parameter(torch.full((n,), start, device=dev, dtype=dt))
        else:
            self.register_parameter("lam", None)

    def calibrated_bias(self) -> Optional[Tensor]:
        """``b + psi_bias`` (or the base bias when there is no calibration bias)."""
        if self.bias is None:
            return None
        return self.bias if self.psi_bias is None else self.bias + self.psi_bias

    def feature_scale(self) -> Optional[Tensor]:
        """The per-output factor FCM applies (``lam`` or ``1 + lam``), or None."""
        if self.lam is None:
            return None
        return self.lam if self.combine == "multiply" else 1.0 + self.lam

    def weight_scale(self) -> Tensor:
        """``tile(psi)`` broadcastable to ``weight`` (ones without WCM)."""
        raise NotImplementedError

    def calibrated_weight(self) -> Tensor:
        """``theta~ = tile(psi) * theta`` (the base weight without WCM)."""
        return self.weight if self.psi is None else self.weight * self.weight_scale()

    def folded(self) -> Tuple[Tensor, Optional[Tensor]]:
        """``(lam * theta~, lam * b~)``: the calibration folded into one weight and
        bias, for inference (no gradient). Cached until a parameter changes (in-place
        steps bump a tensor's version; ``.to()`` moves its storage)."""
        key = tuple(
            (id(p), p._version, p.data_ptr())
            for p in self._parameters.values()
            if p is not None
        )
        cache = self.__dict__.get("_folded_cache")
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        with torch.no_grad():
            w, b = self.calibrated_weight(), self.calibrated_bias()
            scale = self.feature_scale()
            if scale is not None:
                shape = (-1,) + (1,) * (w.dim() - 1)
                w = w * scale.view(shape)
                b = None if b is None else b * scale
            w = w.detach().clone() if w is self.weight else w
            b = b.detach().clone() if b is self.bias and b is not None else b
        self.__dict__["_folded_cache"] = (key, w, b)
        return w, b

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", wcm={self.wcm}, fcm={self.fcm}, combine={self.combine!r}"
        )


class CalibratedLinear(_Calibrated, nn.Linear):
    """A linear layer with weight calibration (``psi``, shape ``(O,)``) and feature
    calibration (``lam``, shape ``(O,)``, or ``(1,)`` with ``scalar_fcm``). Identity
    at initialisation. Both at once are an over-parametrisation of one per-output
    scale (see the module docstring); :func:`calibrate` keeps ``psi`` only unless
    told otherwise, this class builds what it is asked for.

    :param in_features: input features.
    :param out_features: output units.
    :param bias: with a base bias.
    :param wcm: weight calibration (``psi`` and the calibration bias ``psi_bias``).
    :param fcm: feature calibration (``lam``).
    :param combine: ``"multiply"`` (``lam * h``) or ``"add"`` (``h + lam * h``).
    :param scalar_fcm: one FCM scale for the whole layer instead of one per unit.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        wcm: bool = True,
        fcm: bool = True,
        combine: str = "multiply",
        scalar_fcm: bool = False,
        device=None,
        dtype=None,
    ):
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_calibration(
            (out_features,), out_features, wcm, fcm, combine, scalar_fcm
        )

    @classmethod
    def from_layer(cls, layer: nn.Linear, **options) -> "CalibratedLinear":
        """A calibrated layer that shares ``layer``'s weight and bias tensors."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight = layer.weight
        new.bias = layer.bias
        new._init_calibration(
            (layer.out_features,),
            layer.out_features,
            options.get("wcm", True),
            options.get("fcm", True),
            options.get("combine", "multiply"),
            options.get("scalar_fcm", False),
        )
        new.train(layer.training)
        return new

    def weight_scale(self) -> Tensor:
        if self.psi is None:
            return torch.ones_like(self.weight[:, :1])
        return self.psi.unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # inference: one kernel, folded weights
            return F.linear(x, *self.folded())
        # psi scales whole rows of W, so (psi * W) x = psi * (W x): one matmul with
        # the base weight and a per-unit scale of its output, instead of forming
        # psi * W (O x I products, and as many again in the backward pass). The
        # parameters are read from ``_parameters`` directly (learn2learn's
        # ``update_module`` writes its fast weights there): this layer runs at batch
        # sizes of 10, where each Python attribute lookup is a visible cost.
        p = self._parameters
        psi, bias, lam = p["psi"], p["bias"], p["lam"]
        if psi is None:
            h = F.linear(x, p["weight"], bias)
        else:
            h = F.linear(x, p["weight"])
            if bias is None:
                h = h * psi
            else:
                extra = p["psi_bias"]
                h = torch.addcmul(bias if extra is None else bias + extra, h, psi)
        if lam is None:
            return h
        return h * lam if self.combine == "multiply" else torch.addcmul(h, h, lam)


class CalibratedConv2d(_Calibrated, nn.Conv2d):
    """A 2-d convolution with weight calibration (``psi``, shape ``(O, I/groups, 1, 1)``,
    tiled over the kernel) and feature calibration (``lam``, one scale per output
    channel). Identity at initialisation. Arguments as :class:`torch.nn.Conv2d`, plus
    ``wcm``, ``fcm``, ``combine`` and ``scalar_fcm`` as in :class:`CalibratedLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        wcm: bool = True,
        fcm: bool = True,
        combine: str = "multiply",
        scalar_fcm: bool = False,
        device=None,
        dtype=None,
    ):
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_calibration(
            (out_channels, in_channels // groups, 1, 1),
            out_channels,
            wcm,
            fcm,
            combine,
            scalar_fcm,
        )

    @classmethod
    def from_layer(cls, layer: nn.Conv2d, **options) -> "CalibratedConv2d":
        """A calibrated convolution that shares ``layer``'s weight and bias tensors."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for attr in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "transposed",
            "output_padding",
            "groups",
            "padding_mode",
            "_reversed_padding_repeated_twice",
        ):
            setattr(new, attr, getattr(layer, attr))
        new.weight = layer.weight
        new.bias = layer.bias
        new._init_calibration(
            (layer.out_channels, layer.in_channels // layer.groups, 1, 1),
            layer.out_channels,
            options.get("wcm", True),
            options.get("fcm", True),
            options.get("combine", "multiply"),
            options.get("scalar_fcm", False),
        )
        new.train(layer.training)
        return new

    def weight_scale(self) -> Tensor:
        if self.psi is None:
            return torch.ones_like(self.weight[:, :, :1, :1])
        return self.psi

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # inference: one kernel, folded weights
            return self._conv_forward(x, *self.folded())
        h = self._conv_forward(x, self.calibrated_weight(), self.calibrated_bias())
        scale = self.feature_scale()
        return h if scale is None else h * scale.view(1, -1, 1, 1)


CalibratedLayer = Union[CalibratedLinear, CalibratedConv2d]


class BatchNormFeatureScale(nn.Module):
    """Feature calibration after a batch norm: ``lam * BN(h)`` (``"multiply"``) or
    ``BN(h) + lam * BN(h)`` (``"add"``), one ``lam`` per channel (or one for the
    layer with ``scalar_fcm``). Identity at initialisation.

    Used by :func:`calibrate` with ``fcm_position="after_bn"``, in place of the
    batch norm that directly follows a calibrated layer. The batch norm is kept as
    the child ``bn`` (its affine parameters and running statistics are base
    parameters / buffers); ``lam`` is a calibration parameter.

    :param bn: the batch norm to wrap.
    :param combine: ``"multiply"`` or ``"add"``.
    :param scalar_fcm: one scale for all channels.
    """

    def __init__(
        self, bn: nn.modules.batchnorm._BatchNorm, combine: str, scalar_fcm=False
    ):
        super().__init__()
        check_choice("combine", combine, COMBINE_MODES)
        self.bn, self.combine = bn, combine
        start = 1.0 if combine == "multiply" else 0.0
        n = 1 if scalar_fcm else bn.num_features
        ref = bn.running_mean if bn.running_mean is not None else torch.zeros(1)
        self.lam = nn.Parameter(
            torch.full((n,), start, device=ref.device, dtype=ref.dtype)
        )

    def feature_scale(self) -> Tensor:
        """The per-channel factor (``lam`` or ``1 + lam``)."""
        return self.lam if self.combine == "multiply" else 1.0 + self.lam

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(x)
        shape = (1, -1) + (1,) * (h.dim() - 2)
        return h * self.feature_scale().view(shape)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"


class CalibratedBasicBlock(BasicBlock):
    """The residual block of :class:`~avalanche_meta.models.resnet.ReducedResNet18` with
    calibrated convolutions (both 3x3 convolutions and the 1x1 shortcut). With the
    default ``fcm_position="before_bn"``, FCM scales each convolution's output
    before its batch norm, as in the paper's Eq. 4 (``act(BN(Omega_lambda(F) (+)
    F))``), where training-mode batch norm cancels it; ``fcm_position="after_bn"``
    scales the batch norm's output instead (see the module docstring). Identity at
    initialisation.

    :param in_planes: input channels.
    :param planes: output channels.
    :param stride: stride of the first convolution.
    :param options: ``wcm``, ``fcm``, ``combine``, ``fcm_position``, ``scalar_fcm``
        as in :func:`calibrate`.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, **options):
        super().__init__(in_planes, planes, stride)
        options = _layer_options(**options)
        _replace_layers(self, options, skip=set())


def _layer_options(
    wcm: bool = True,
    fcm: bool = True,
    combine: str = "multiply",
    fcm_position: str = "before_bn",
    scalar_fcm: bool = False,
    merge_linear_fcm: bool = True,
) -> dict:
    check_choice("combine", combine, COMBINE_MODES)
    check_choice("fcm_position", fcm_position, FCM_POSITIONS)
    if not (wcm or fcm):
        raise ValueError(
            "calibration needs weight calibration (`wcm=True`), feature calibration "
            "(`fcm=True`) or both; got neither."
        )
    return {
        "wcm": bool(wcm),
        "fcm": bool(fcm),
        "combine": combine,
        "fcm_position": fcm_position,
        "scalar_fcm": bool(scalar_fcm),
        "merge_linear_fcm": bool(merge_linear_fcm),
    }


def _replace_layers(module: nn.Module, options: dict, skip: set) -> int:
    """Convert the plain ``nn.Linear`` / ``nn.Conv2d`` under ``module`` (but the
    modules whose ``id`` is in ``skip``). With ``fcm_position="after_bn"``, a layer
    whose next sibling (the next child registered in the same parent) is a batch
    norm gets no ``lam``; the batch norm is wrapped in a
    :class:`BatchNormFeatureScale` instead."""
    count = 0
    children = list(module.named_children())
    for i, (name, child) in enumerate(children):
        if isinstance(child, (_Calibrated, BatchNormFeatureScale)):
            continue
        if type(child) in (nn.Linear, nn.Conv2d):
            if id(child) in skip:
                continue
            opts = {k: options[k] for k in ("wcm", "fcm", "combine", "scalar_fcm")}
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            bn_after = isinstance(nxt, nn.modules.batchnorm._BatchNorm)
            if opts["fcm"] and bn_after and options["fcm_position"] == "after_bn":
                setattr(
                    module,
                    children[i + 1][0],
                    BatchNormFeatureScale(nxt, opts["combine"], opts["scalar_fcm"]),
                )
                opts["fcm"] = False
                if not opts["wcm"]:  # nothing left to calibrate on the layer itself
                    count += 1
                    continue
            if type(child) is nn.Linear:
                if opts["wcm"] and opts["fcm"] and options["merge_linear_fcm"]:
                    opts["fcm"] = False  # the same per-output scale as psi
                setattr(module, name, CalibratedLinear.from_layer(child, **opts))
            else:
                setattr(module, name, CalibratedConv2d.from_layer(child, **opts))
            count += 1
        else:
            count += _replace_layers(child, options, skip)
    return count


def calibrated_layers(model: nn.Module) -> List[CalibratedLayer]:
    """The calibrated layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _Calibrated)]


def output_layer(model: nn.Module) -> nn.Linear:
    """The output layer of ``model``: its last ``nn.Linear`` (calibrated or not) in
    module-registration order. :raises ValueError: if there is none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer: there is no output layer "
            "to find (calibrate with layers='all', or pass `num_classes`)."
        )
    return linears[-1]


def is_calibrated(model: nn.Module) -> bool:
    """True if :func:`calibrate` (or a calibrated layer) is already in ``model``."""
    return any(
        isinstance(m, (_Calibrated, BatchNormFeatureScale)) for m in model.modules()
    )


def calibrate(
    model: nn.Module,
    *,
    wcm: bool = True,
    fcm: bool = True,
    combine: str = "multiply",
    fcm_position: str = "before_bn",
    layers: str = "all",
    scalar_fcm: bool = False,
    merge_linear_fcm: bool = True,
) -> nn.Module:
    """Turn the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model`` into calibrated layers.

    In place; the calibrated layers share the original weight and bias tensors, so
    the model computes exactly what it did before (identity at initialisation).
    Build the optimizer *after* calling this, over :func:`base_parameters`.

    :param model: any module (Avalanche's ``SimpleMLP``, a conv net, a ResNet, ...).
    :param wcm: weight calibration (``psi`` and the calibration bias).
    :param fcm: feature calibration (``lam``).
    :param combine: ``"multiply"`` (reading code) or ``"add"`` (paper's Eq. 4).
    :param fcm_position: ``"before_bn"`` (default, the paper's Eq. 4: the scale is
        applied to the layer output, before a following batch norm, which cancels
        it in training mode) or ``"after_bn"`` (after the batch norm that directly
        follows a layer; see the module docstring).
    :param layers: ``"all"``, ``"hidden"`` (every layer but the output layer, the
        last ``nn.Linear``, which stays plain) or ``"output"`` (the output layer
        only).
    :param scalar_fcm: one FCM scale per layer instead of one per unit / channel.
        ``layers="output", wcm=False, fcm=True, scalar_fcm=True`` is a single learned
        logit scale (an inverse temperature) on the output layer.
    :param merge_linear_fcm: a linear layer with both WCM and FCM keeps ``psi``
        only (the two are the same per-output scale, see the module docstring);
        ``False`` keeps the paper's literal pair.
    :return: ``model`` itself.
    :raises ValueError: if ``model`` is already calibrated or has no layer to
        convert.
    """
    if is_calibrated(model):
        raise ValueError(
            "`calibrate` was applied to a model that is already calibrated; call it "
            "once, on the plain model."
        )
    if not (wcm or fcm):
        raise ValueError("`calibrate` needs `wcm=True`, `fcm=True` or both.")
    options = _layer_options(
        wcm, fcm, combine, fcm_position, scalar_fcm, merge_linear_fcm
    )
    check_choice("layers", layers, LAYER_SETS)
    if type(model) in (nn.Linear, nn.Conv2d):
        raise ValueError(
            "`calibrate` converts the layers inside a model; for a single layer use "
            "CalibratedLinear.from_layer / CalibratedConv2d.from_layer."
        )
    skip: set = set()
    if layers != "all":
        head = output_layer(model)
        if layers == "hidden":
            skip = {id(head)}
        else:
            skip = {
                id(m)
                for m in model.modules()
                if type(m) in (nn.Linear, nn.Conv2d) and m is not head
            }
    n = _replace_layers(model, options, skip)
    if n == 0:
        raise ValueError(
            f"`calibrate` found no nn.Linear or nn.Conv2d layer to convert in "
            f"{type(model).__name__} (layers={layers!r}): there is nothing to "
            "calibrate (layers of other types, or subclasses of these, are not "
            "converted)."
        )
    return model


def is_calibration_parameter(name: str) -> bool:
    """True if the parameter called ``name`` (as in ``named_parameters``) is a
    calibration parameter (``psi``, ``psi_bias``, ``lam``)."""
    return name.rsplit(".", 1)[-1] in CALIBRATION_NAMES


def named_base_parameters(model: nn.Module) -> Iterator[Tuple[str, Tensor]]:
    """``(name, parameter)`` for the base parameters ``theta`` (everything but psi/lam)."""
    return (
        (n, p) for n, p in model.named_parameters() if not is_calibration_parameter(n)
    )


def named_calibration_parameters(model: nn.Module) -> Iterator[Tuple[str, Tensor]]:
    """``(name, parameter)`` for the calibration parameters (psi, psi_bias, lam)."""
    return ((n, p) for n, p in model.named_parameters() if is_calibration_parameter(n))


def base_parameters(model: nn.Module) -> List[Tensor]:
    """The base parameters ``theta`` of ``model``."""
    return [p for _, p in named_base_parameters(model)]


def calibration_parameters(model: nn.Module) -> List[Tensor]:
    """The calibration parameters ``psi``, ``psi_bias``, ``lam`` of ``model``."""
    return [p for _, p in named_calibration_parameters(model)]


def remove_from_optimizer(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor]
) -> int:
    """Remove ``params`` (and their state) from every group of ``optimizer``.

    Avalanche's ``make_optimizer`` puts every model parameter into the optimizer;
    this undoes it for the calibration parameters. :return: how many were removed.
    """
    ids = {id(p) for p in params}
    removed = 0
    for group in optimizer.param_groups:
        keep = [p for p in group["params"] if id(p) not in ids]
        removed += len(group["params"]) - len(keep)
        group["params"] = keep
    for p in params:
        optimizer.state.pop(p, None)
    return removed


# -- the maths of the calibration update --------------------------------------------


def calibrated_weights(model: nn.Module) -> List[Tensor]:
    """``theta~_i = tile(psi_i) * theta_i`` of every calibrated layer (differentiable)."""
    return [layer.calibrated_weight() for layer in calibrated_layers(model)]


def fisher_importance(
    loss: Tensor, model: nn.Module, *, normalize: bool = True
) -> List[Tensor]:
    """The importance ``Lambda`` of each calibrated weight (term (a) of ``L_c``).

    SPEC: "squared gradient of the memory distillation loss with respect to the
    calibrated weights, divided by the calibration scale". Choices where the paper is
    vague, each deliberate:

    - one gradient of the batch-mean loss (an empirical, not per-sample, Fisher: a
      per-sample one costs one backward pass per memory sample and incoming batch);
    - ``dL/dtheta~`` is obtained by the chain rule, ``dL/dtheta / tile(psi)``;
    - "divided by the calibration scale" is ``/ max(|tile(psi)|, 1e-3)`` (kept positive);
    - ``normalize=True`` divides by the largest importance over all calibrated
      weights (``Lambda`` in [0, 1]), so that the consolidation weight does not
      depend on the loss's magnitude (the raw squared batch gradient is ~1e-6 and
      would make term (a) vanish). Dividing by the mean instead let a few weights
      get importances of the order of the number of weights and made the outer
      step diverge (NaN) on permuted MNIST.

    :param loss: the memory distillation loss at the current parameters.
    :param model: the calibrated model.
    :param normalize: divide by the largest importance (over all calibrated layers).
    :return: one detached tensor per calibrated layer, shaped like its weight.
    """
    layers = calibrated_layers(model)
    grads = torch.autograd.grad(
        loss, [layer.weight for layer in layers], allow_unused=True
    )
    Lambda = []
    for layer, g in zip(layers, grads):
        if g is None:
            Lambda.append(torch.zeros_like(layer.weight))
            continue
        s = layer.weight_scale().detach().abs().clamp_min(PSI_EPS)
        g_tilde = g.detach() / s
        Lambda.append(g_tilde.pow(2) / s)
    if normalize:
        peaks = [L.max() for L in Lambda if L.numel()]
        if peaks:  # on the device: no host read (a GPU step stays asynchronous)
            peak = torch.stack(peaks).max()
            ok = (peak > 0) & torch.isfinite(peak)
            peak = torch.where(ok, peak, torch.ones_like(peak))
            Lambda = [L / peak for L in Lambda]
    return Lambda


def consolidation_loss(
    theta_tilde: Sequence[Tensor],
    theta_tilde_old: Sequence[Tensor],
    Lambda: Sequence[Tensor],
) -> Tensor:
    """Term (a): ``1/2 sum_i (theta~_i - theta~_old_i)^T Lambda_i (theta~_i - theta~_old_i)``."""
    terms = [
        (L * (w - w_old).pow(2)).sum()
        for w, w_old, L in zip(theta_tilde, theta_tilde_old, Lambda)
    ]
    if not terms:  # no calibrated weight (e.g. FCM after batch norm only)
        return torch.zeros(())
    return 0.5 * torch.stack(terms).sum()


def distillation_kl(z: Tensor, z_stored: Tensor, T: float) -> Tensor:
    """``KL(softmax(z / T) || softmax(z_stored / T))``, mean over the batch.

    The direction is SPEC's (current outputs first). Only the units that were active
    when each sample was stored (``z_stored > MASK_VALUE / 2``) take part, on both
    sides: units masked at storage time carry no target, and including them would
    make the KL infinite.

    :param z: current logits ``(B, C)``.
    :param z_stored: logits stored with the samples, masked as at storage time.
    :param T: temperature.
    """
    active = z_stored > MASK_VALUE / 2
    log_p = F.log_softmax(z.masked_fill(~active, MASK_VALUE) / T, dim=1)
    log_q = F.log_softmax(z_stored.masked_fill(~active, MASK_VALUE) / T, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~active, 0.0)
    return kl.sum(dim=1).mean()


class CalibrationMemory(nn.Module):
    """Episodic memory of (x, y, t, logits at storage time), balanced over tasks.

    Why not Avalanche's storage policies or this package's ``ReservoirMemory``: NCCL
    needs the logits produced when each sample was stored (the distillation targets)
    and per-task grouping, and the memory must be a module whose tensors are in
    ``state_dict``; Avalanche's buffers hold datasets, ``ReservoirMemory`` is one
    reservoir over the whole stream.

    Policy (one of SPEC's options, chosen so that the number of tasks need not be
    known in advance): the ``mem_size`` slots are shared equally by the tasks seen so
    far (``mem_size // n_tasks`` each). Within a task, slots follow a reservoir
    sample of that task's stream. When a new task starts, every older task keeps a
    random subset of its slots of the new quota.

    Invariants: ``task[i] == -1`` iff slot ``i`` is free; each task ``k`` holds at most
    ``mem_size // n_tasks`` slots; ``seen[k]`` is the number of samples of task ``k``
    offered to the memory. All are buffers (``state_dict`` round trip is exact).

    :param mem_size: total number of slots.
    """

    def __init__(self, mem_size: int):
        super().__init__()
        check_positive("mem_size", mem_size, integer=True)
        self.mem_size = mem_size
        self.register_buffer("x", torch.zeros(0))
        self.register_buffer("y", torch.zeros(mem_size, dtype=torch.long))
        self.register_buffer("t", torch.zeros(mem_size, dtype=torch.long))
        self.register_buffer("logits", torch.zeros(0))
        self.register_buffer("task", torch.full((mem_size,), -1, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.long))

    @property
    def n_tasks(self) -> int:
        """Number of tasks the memory has been told about."""
        return int(self.seen.numel())

    def __len__(self) -> int:
        return int((self.task >= 0).sum())

    def quota(self) -> int:
        """Slots per task."""
        return self.mem_size // max(self.n_tasks, 1)

    @torch.no_grad()
    def start_task(self, k: int) -> None:
        """Make room for task ``k`` (tasks are numbered 0, 1, 2, ... in order).

        :raises ValueError: if ``mem_size`` cannot hold one sample of each task.
        """
        if k < self.n_tasks:
            return
        n = k + 1
        if self.mem_size < n:
            raise ValueError(
                f"`mem_size`={self.mem_size} is smaller than the number of tasks ({n}): "
                "the memory keeps at least one sample per task. Increase `mem_size` "
                f"to at least {n} (a few per task is the usual minimum)."
            )
        extra = torch.zeros(n - self.n_tasks, dtype=torch.long, device=self.seen.device)
        self.seen = torch.cat([self.seen, extra])
        q = self.quota()
        for j in range(n - 1):
            slots = (self.task == j).nonzero().flatten()
            if len(slots) > q:
                drop = slots[torch.randperm(len(slots), device=slots.device)[q:]]
                self.task[drop] = -1

    def _allocate(self, x: Tensor, logits: Tensor) -> None:
        if self.x.dim() == 1:
            self.x = torch.zeros(
                (self.mem_size, *x.shape[1:]), dtype=x.dtype, device=x.device
            )
            self.logits = torch.zeros(
                (self.mem_size, logits.shape[1]), dtype=logits.dtype, device=x.device
            )

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, t: Tensor, logits: Tensor, k: int) -> None:
        """Offer a batch of task ``k`` (call :meth:`start_task` first).

        :param x: inputs.
        :param y: labels.
        :param t: task labels.
        :param logits: the model's (masked) logits for ``x`` now, stored as targets.
        :param k: the task index.
        """
        if k >= self.n_tasks:
            raise ValueError(f"call start_task({k}) before adding samples of task {k}.")
        self._allocate(x, logits)
        q = self.quota()
        # The slot bookkeeping runs on a host copy of `task` (one read per batch on
        # a GPU, none on the CPU); the draws are the same CPU calls as a sample-by-
        # sample loop's, and each slot keeps the last sample written to it.
        task = self.task.cpu()
        seen = int(self.seen[k])
        chosen: Dict[int, int] = {}
        for i in range(x.shape[0]):
            seen += 1
            mine = (task == k).nonzero().flatten()
            if len(mine) < q:
                free = (task < 0).nonzero().flatten()
                slot = int(free[0])
            else:
                j = int(torch.randint(0, seen, (1,)))
                if j >= len(mine):
                    continue
                slot = int(mine[j])
            task[slot] = k
            chosen[slot] = i
        self.seen[k] += x.shape[0]
        if not chosen:
            return
        dev = self.x.device
        slots = torch.tensor(list(chosen.keys()), dtype=torch.long, device=dev)
        rows = torch.tensor(list(chosen.values()), dtype=torch.long, device=x.device)
        self.x[slots] = x[rows].to(self.x.dtype)
        self.y[slots] = y[rows].to(dev)
        self.t[slots] = t[rows].to(dev)
        self.logits[slots] = logits[rows].detach().to(self.logits.dtype)
        if task is not self.task:
            self.task.copy_(task)

    def sample(
        self, n: int, *, exclude_task: Optional[int] = None
    ) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``n`` random stored samples (fewer if fewer are stored), as
        ``(x, y, t, logits)``, or None if there are none.

        :param exclude_task: leave out the samples of this task (the current one).
        """
        ok = self.task >= 0
        if exclude_task is not None:
            ok &= self.task != exclude_task
        slots = ok.nonzero().flatten()
        if len(slots) == 0:
            return None
        pick = slots[torch.randperm(len(slots), device=slots.device)[:n]]
        return self.x[pick], self.y[pick], self.t[pick], self.logits[pick]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in ("x", "logits", "seen"):
            if prefix + key in state_dict:
                src = state_dict[prefix + key]
                setattr(
                    self, key, torch.zeros_like(src, device=getattr(self, key).device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"mem_size={self.mem_size}, tasks={self.n_tasks}, stored={len(self)}"


__all__ = [
    "CalibratedLinear",
    "CalibratedConv2d",
    "CalibratedBasicBlock",
    "BatchNormFeatureScale",
    "CalibrationMemory",
    "calibrate",
    "calibrated_layers",
    "is_calibrated",
    "output_layer",
    "base_parameters",
    "calibration_parameters",
    "named_base_parameters",
    "named_calibration_parameters",
]
