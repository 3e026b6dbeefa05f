"""Per-example gradient norms, for the GraNd score (DESIGN §4 "Example scores", §5).

For each example i, ``grad_norms`` returns ``|| grad_w CE(f(x_i; w), y_i) ||_2`` over all
trainable parameters (``requires_grad``) of the model, in eval mode (BatchNorm uses its
running statistics), with no augmentation. GraNd (Paul, Ganguli & Dziugaite 2021, "Deep
Learning on a Data Diet: Finding Important Examples Early in Training") is the mean of
this norm over R independently trained (or initialised) networks; this module computes
one network's norms.

Methods:

- ``naive``: one backward pass per example (the reference; :func:`naive_grad_norms`).
- ``vmap``: ``torch.func.vmap(grad(...))`` over ``functional_call``; materialises every
  per-example gradient, so it handles any model.
- ``ghost``: ONE backward pass of the summed loss, which yields each layer's output
  gradient g_i per example (examples do not interact in eval mode); per-example squared
  norms then follow from g_i and the layer's input a_i without forming per-example
  gradients (Goodfellow 2015, "Efficient Per-Example Gradient Computations"; Li et al.
  2022, "Large Language Models Can Be Strong Differentially Private Learners", ghost
  clipping). Only Linear (2-D input), Conv2d (groups=1, zero padding) and BatchNorm1d/2d
  (running statistics) may hold trainable parameters, each used by one call of its
  module; otherwise :class:`UnsupportedModel` is raised. Not detected: a parameter that
  also enters the loss outside its module's forward (e.g. ``F.linear(h, self.fc.weight)``
  in a custom forward); that use would be missed.
- ``auto``: ``ghost`` where supported, else ``vmap`` for the whole model.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from imp.base.errors import UserError, did_you_mean

METHODS = ("auto", "ghost", "naive", "vmap")
CONV_FORMS = ("auto", "materialise", "gram")
_FAST = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
_SLICE_ELEMENTS = 2**20  # elements of unfolded conv inputs per slice of examples (4 MB in float32)


class UnsupportedModel(UserError):
    """The ghost-norm path cannot handle this model (``auto`` then uses ``vmap``)."""


def grad_norms(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 256, method: str = "auto",
               conv_form: str = "auto") -> Tensor:
    """Per-example ``|| grad_w CE(f(x_i; w), y_i) ||_2`` over all trainable parameters; float64 (N,) on the CPU.

    CE is the cross-entropy of example i alone (not divided by the batch size). The model
    is in eval mode during the call; every module's train/eval flag is restored after it,
    and weights and ``.grad`` are left untouched. ``x`` is processed in chunks of
    ``batch_size`` on the model's device. ``conv_form`` forces how the ghost path
    treats Conv2d layers (``materialise`` or ``gram``; ``auto`` picks per layer with
    :func:`conv_form_for`).
    """
    for name, value, choices in (("method", method, METHODS), ("conv_form", conv_form, CONV_FORMS)):
        if value not in choices:
            raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}"
                            + did_you_mean(value, choices))
    if method == "auto":
        try:
            return grad_norms(model, x, y, batch_size=batch_size, method="ghost", conv_form=conv_form)
        except UnsupportedModel:
            return grad_norms(model, x, y, batch_size=batch_size, method="vmap")
    if method == "naive":
        return naive_grad_norms(model, x, y)
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    layers = _fast_layers(model) if method == "ghost" else []
    device = next(model.parameters()).device
    squares = []
    with _evaluating(model), torch.enable_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            if method == "ghost":
                squares.append(_ghost_squares(model, layers, xb, yb, conv_form))
            else:
                squares.append(_vmap_squares(model, xb, yb))
    return torch.cat(squares).cpu().sqrt()


def naive_grad_norms(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The reference: a Python loop with one ``torch.autograd.grad`` per example, in eval mode;
    same definition and return type as :func:`grad_norms` (squares summed in float64)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    norms = torch.empty(len(x), dtype=torch.float64)
    with _evaluating(model), torch.enable_grad():
        for i in range(len(x)):
            loss = F.cross_entropy(model(x[i:i + 1].to(device)), y[i:i + 1].to(device), reduction="sum")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            norms[i] = sum(g.double().pow(2).sum().item() for g in grads if g is not None)
    return norms.sqrt()


def conv_form_for(layer: nn.Conv2d, positions: int) -> str:
    """``materialise`` or ``gram``: whichever costs fewer multiply-adds per example.

    With P = ``positions`` (output height x width), O output channels and
    F = in_channels x kh x kw, materialising G_i = g_i^T A_i (O x F) costs O P F and the
    Gram form (A_i A_i^T and g_i g_i^T, both P x P) costs P^2 (F + O). Large feature maps
    with few channels materialise; small maps with many channels use the Gram form.
    """
    fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    materialise = layer.out_channels * positions * fan_in
    gram = positions * positions * (fan_in + layer.out_channels)
    return "materialise" if materialise <= gram else "gram"


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """Eval mode inside; every module's own training flag restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _fast_layers(model: nn.Module) -> list[nn.Module]:
    """The modules holding trainable parameters; UnsupportedModel unless ghost norms cover them all."""
    layers, owners = [], {}
    for name, module in model.named_modules():
        trainable = {key: p for key, p in module._parameters.items() if p is not None and p.requires_grad}
        if not trainable:
            continue
        where = f"module {name or 'model'!r} ({type(module).__name__})"
        if type(module) not in _FAST or not set(trainable) <= {"weight", "bias"}:
            raise UnsupportedModel(f"{where} holds parameters {sorted(trainable)}; no ghost norm for it")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                              or isinstance(module.padding, str)):
            raise UnsupportedModel(f"{where}: only groups=1 and integer zero padding are supported")
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.running_mean is None:
            raise UnsupportedModel(f"{where} has no running statistics, so examples would interact")
        for p in trainable.values():
            if owners.setdefault(id(p), name) != name:
                raise UnsupportedModel(f"{where} shares a parameter with {owners[id(p)]!r}")
        layers.append(module)
    return layers


def _ghost_squares(model: nn.Module, layers: list[nn.Module], x: Tensor, y: Tensor, conv_form: str) -> Tensor:
    """Squared per-example gradient norms (float64, (B,)) from one backward pass of the summed loss."""
    records = {}  # module -> (its input a, a zero leaf z added to its output)

    def capture(module, inputs, output):
        if module in records:
            raise UnsupportedModel(f"{type(module).__name__} is called more than once per forward")
        if isinstance(module, nn.Linear) and inputs[0].dim() != 2:
            raise UnsupportedModel(f"Linear with {inputs[0].dim()}-D input")
        # dL/dz = dL/d(output) per example; z is a leaf, so later in-place ops cannot alias it.
        z = torch.zeros_like(output, requires_grad=True)
        records[module] = (inputs[0].detach(), z)
        return output + z

    handles = [layer.register_forward_hook(capture) for layer in layers]
    try:
        loss = F.cross_entropy(model(x.detach()), y, reduction="sum")
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(loss, [z for _, z in records.values()], allow_unused=True)
    total = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for (layer, (a, _)), g in zip(records.items(), grads):
        if g is not None:
            total += _layer_squares(layer, a, g, conv_form)
    return total


def _layer_squares(layer: nn.Module, a: Tensor, g: Tensor, conv_form: str) -> Tensor:
    """Per-example squared norm of the gradient of ``layer``'s trainable parameters, from its input
    a and output gradient g (batch first)."""
    train_weight = layer.weight.requires_grad
    train_bias = layer.bias is not None and layer.bias.requires_grad
    n = len(a)
    if isinstance(layer, nn.Linear):  # dL_i/dW = g_i a_i^T (outer product): ||.||^2 = ||g_i||^2 ||a_i||^2
        g_sq = g.pow(2).sum(1).double()
        return train_weight * g_sq * a.pow(2).sum(1).double() + train_bias * g_sq
    if isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):  # y = gamma x_hat + beta, running statistics
        shape = (1, -1) + (1,) * (a.dim() - 2)
        x_hat = (a - layer.running_mean.view(shape)) * (layer.running_var.view(shape) + layer.eps).rsqrt()
        d_gamma = (g * x_hat).reshape(n, a.shape[1], -1).sum(2)  # (B, C): summed over positions
        d_beta = g.reshape(n, a.shape[1], -1).sum(2)
        return train_weight * d_gamma.pow(2).sum(1).double() + train_bias * d_beta.pow(2).sum(1).double()
    # Conv2d, in slices of examples whose unfolded inputs (and P x P Gram matrices) fit in a few
    # MB: measured 2x faster than one unfold of a 256-example chunk on ResNet-20's 32x32 layers.
    g = g.reshape(n, layer.out_channels, -1)  # (B, O, P), P = output positions
    total = train_bias * g.sum(2).pow(2).sum(1).double()
    if not train_weight:
        return total
    form = conv_form_for(layer, g.shape[2]) if conv_form == "auto" else conv_form
    per_example = g.shape[2] * (layer.weight[0].numel() + (g.shape[2] if form == "gram" else 0))
    step = max(1, _SLICE_ELEMENTS // per_example)
    squares = []
    for start in range(0, n, step):
        # patches: (b, F, P), F = in_channels x kh x kw, one column per output position
        patches = F.unfold(a[start:start + step], layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        g_slice = g[start:start + step]
        if form == "materialise":  # G_i = g_i A_i^T: (O, F), the per-example weight gradient
            squares.append(torch.bmm(g_slice, patches.mT).pow(2).sum((1, 2)))
        else:  # ||G_i||^2 = sum_pq (A_i^T A_i)_pq (g_i^T g_i)_pq, both (P, P)
            squares.append((torch.bmm(patches.mT, patches) * torch.bmm(g_slice.mT, g_slice)).sum((1, 2)))
    return total + torch.cat(squares).double()


def _vmap_squares(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Squared per-example gradient norms (float64, (B,)) by ``vmap(grad)`` over all trainable parameters."""
    # One path per (module, attribute) holding a trainable parameter, each mapped to the first path
    # of that parameter: a parameter tied across modules gets one gradient (the sum over its
    # uses), and a module registered twice is swapped once (tie_weights=True with a module
    # registered under two names leaves a plain tensor in place of its parameter in torch 2.15).
    trainable, first = {}, {}
    for prefix, module in model.named_modules():
        for key, p in module._parameters.items():
            if p is not None and p.requires_grad:
                path = f"{prefix}.{key}" if prefix else key
                first[path] = trainable.setdefault(id(p), (path, p.detach()))[0]
    params = dict(trainable.values())

    def loss(params, xi, yi):
        swapped = {path: params[name] for path, name in first.items()}
        logits = functional_call(model, swapped, (xi.unsqueeze(0),), tie_weights=False)
        return F.cross_entropy(logits, yi.unsqueeze(0), reduction="sum")

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x.detach(), y)
    return sum(g.reshape(len(x), -1).pow(2).sum(1).double() for g in grads.values())
