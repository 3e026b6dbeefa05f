"""Model registry for lottery-ticket / iterative-magnitude-pruning experiments.

Architectures follow Frankle & Carbin (2019), "The Lottery Ticket Hypothesis:
Finding Sparse, Trainable Neural Networks" (LeNet-300-100, Conv-2/4/6), He et
al. (2016), "Deep Residual Learning for Image Recognition" (CIFAR ResNets),
and Simonyan & Zisserman (2015), "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (VGG), in the CIFAR variants used by OpenLTH
(github.com/facebookresearch/open_lth). ``resnet18`` is the CIFAR ResNet-18 of
kuangliu/pytorch-cifar.

Use :func:`build_model`; the raw builders in :data:`MODELS` return modules with
PyTorch's default initialisation, which :func:`build_model` replaces.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from imp.errors import UserError, did_you_mean

Shape = tuple[int, int, int]


def _conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    """A bias-free convolution ("same" padding for 3x3) followed by BatchNorm."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """Residual block of two 3x3 conv+BN layers (He et al. 2016, as in OpenLTH).

    The shortcut is the identity, or a strided 1x1 conv + BN when the shape changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, 3, stride), nn.ReLU(), *_conv_bn(c_out, c_out))
        changes_shape = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if changes_shape else nn.Sequential()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem conv+BN+ReLU, stages of BasicBlocks, global average pool, Linear.

    ``stages`` lists (width, number of blocks); every stage after the first starts
    with a stride-2 block.
    """

    def __init__(self, in_channels: int, stages: list[tuple[int, int]], num_classes: int) -> None:
        super().__init__()
        c = stages[0][0]
        layers: list[nn.Module] = [*_conv_bn(in_channels, c), nn.ReLU()]
        for i, (width, blocks) in enumerate(stages):
            for j in range(blocks):
                layers.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
                c = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _pooled_size(name: str, input_shape: Shape, pools: int) -> tuple[int, int]:
    """Spatial size after ``pools`` 2x2 max pools; ValueError if it would vanish."""
    h, w = input_shape[1] >> pools, input_shape[2] >> pools
    if h < 1 or w < 1:
        raise UserError(
            f"model {name!r} applies {pools} 2x2 max pools and needs inputs of at least "
            f"{2 ** pools}x{2 ** pools}, got {input_shape[1]}x{input_shape[2]}"
        )
    return h, w


def _conv_features(in_channels: int, plan: list[int | str], batch_norm: bool) -> tuple[nn.Sequential, int]:
    """3x3 conv (+BN) + ReLU for each int in ``plan``, 2x2 max pool for each 'M'."""
    layers: list[nn.Module] = []
    c = in_channels
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        assert isinstance(item, int)
        layers.append(nn.Conv2d(c, item, 3, padding=1))  # with bias, as in OpenLTH's VGG
        layers += [nn.BatchNorm2d(item), nn.ReLU()] if batch_norm else [nn.ReLU()]
        c = item
    return nn.Sequential(*layers), c


# --- builders: (input_shape, num_classes, widths, width) -> nn.Module ----------------------


def _reject(
    name: str, widths: tuple[int, ...], width: int, *, allow_widths: bool = False, allow_width: bool = False
) -> None:
    """ValueError for options the model does not take, or non-positive widths."""
    if widths and not allow_widths:
        raise UserError(f"model {name!r} does not take 'widths' (only 'mlp' does), got {widths}")
    if width and not allow_width:
        raise UserError(f"model {name!r} does not take 'width' (only resnets and vgg do), got {width}")
    if any(w < 1 for w in widths) or width < 0:
        raise UserError(f"widths must be positive, got widths={widths}, width={width}")


def _mlp(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
    """Fully connected ReLU network; default hidden widths (300, 100) = LeNet-300-100."""
    _reject("mlp", widths, width, allow_widths=True)
    layers: list[nn.Module] = [nn.Flatten()]
    n_in = input_shape[0] * input_shape[1] * input_shape[2]
    for n_out in widths or (300, 100):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        n_in = n_out
    return nn.Sequential(*layers, nn.Linear(n_in, num_classes))


def _lenet_300_100(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
    """LeNet-300-100 (Frankle & Carbin 2019, Figure 2)."""
    _reject("lenet_300_100", widths, width)
    return _mlp(input_shape, num_classes, (300, 100), 0)


def _frankle_conv(name: str, plan: list[int | str]) -> Callable[..., nn.Module]:
    def build(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
        """Conv-2/4/6 of Frankle & Carbin (2019): VGG-like convs, then FC 256-256-classes."""
        _reject(name, widths, width)
        h, w = _pooled_size(name, input_shape, plan.count("M"))
        features, c = _conv_features(input_shape[0], plan, batch_norm=False)
        return nn.Sequential(
            features, nn.Flatten(),
            nn.Linear(c * h * w, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    return build


def _cifar_resnet(name: str, blocks: int) -> Callable[..., nn.Module]:
    def build(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
        """ResNet-(6n+2) for CIFAR (He et al. 2016, Sec. 4.2; OpenLTH), base width 16."""
        _reject(name, widths, width, allow_width=True)
        w = width or 16
        return ResNet(input_shape[0], [(w, blocks), (2 * w, blocks), (4 * w, blocks)], num_classes)

    return build


def _resnet18(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
    """CIFAR ResNet-18 (kuangliu/pytorch-cifar): 3x3 stem, no max pool, 4 stages of 2 blocks."""
    _reject("resnet18", widths, width, allow_width=True)
    w = width or 64
    return ResNet(input_shape[0], [(w, 2), (2 * w, 2), (4 * w, 2), (8 * w, 2)], num_classes)


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015; OpenLTH's cifar_vgg)."""

    def __init__(self, in_channels: int, plan: list[int | str], num_classes: int) -> None:
        super().__init__()
        features, c = _conv_features(in_channels, plan, batch_norm=True)
        self.features = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _vgg(name: str, plan: list[int | str]) -> Callable[..., nn.Module]:
    def build(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
        """CIFAR VGG with BatchNorm; channel counts scaled by width/64."""
        _reject(name, widths, width, allow_width=True)
        _pooled_size(name, input_shape, plan.count("M"))
        w = width or 64
        scaled = [c if c == "M" else max(1, int(c) * w // 64) for c in plan]
        return VGG(input_shape[0], scaled, num_classes)

    return build


_CONV2 = [64, 64, "M"]
_CONV4 = _CONV2 + [128, 128, "M"]
_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "lenet_300_100": _lenet_300_100,
    "conv2": _frankle_conv("conv2", _CONV2),
    "conv4": _frankle_conv("conv4", _CONV4),
    "conv6": _frankle_conv("conv6", _CONV4 + [256, 256, "M"]),
    "resnet20": _cifar_resnet("resnet20", 3),
    "resnet32": _cifar_resnet("resnet32", 5),
    "resnet56": _cifar_resnet("resnet56", 9),
    "vgg11": _vgg("vgg11", _VGG11),
    "vgg16": _vgg("vgg16", _VGG16),
    "resnet18": _resnet18,
}


def _initialise(model: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal (fan_in, ReLU gain) conv/linear weights, zero biases, BN (1, 0), as in OpenLTH."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    widths: tuple[int, ...] = (),
    width: int = 0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Build and initialise model ``name`` for inputs of shape (C, H, W) and ``num_classes`` outputs.

    ``widths`` (mlp only) are the hidden layer widths, default (300, 100). ``width``
    (resnets, vgg) is the base width; 0 means the standard one (16 for resnet20/32/56,
    64 for vgg and resnet18). Weights are drawn from ``generator`` (a CPU generator);
    when it is None a fresh generator seeded 0 is used, so the result is deterministic.
    torch's global RNG state is left unchanged.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
                        + did_you_mean(name.lower(), MODELS))
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise UserError(f"input_shape must be three positive ints (C, H, W), got {input_shape!r}")
    if num_classes < 1:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    # Layer constructors draw PyTorch's default init from the global RNG; isolate that.
    with torch.random.fork_rng(devices=[]):
        model = MODELS[name](shape, num_classes, tuple(widths), width)
    _initialise(model, generator)
    return model


def prunable_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of every Conv2d/Linear weight, in registration order."""
    return [
        f"{prefix}.weight" if prefix else "weight"
        for prefix, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
