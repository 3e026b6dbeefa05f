"""Model registry for lottery-ticket / iterative-magnitude-pruning experiments.

Architectures follow Frankle & Carbin (2019), "The Lottery Ticket Hypothesis:
Finding Sparse, Trainable Neural Networks" (LeNet-300-100, Conv-2/4/6), He et
al. (2016), "Deep Residual Learning for Image Recognition" (CIFAR ResNets),
and Simonyan & Zisserman (2015), "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (VGG), in the CIFAR variants used by OpenLTH
(github.com/facebookresearch/open_lth). ``resnet18`` is the CIFAR ResNet-18 of
kuangliu/pytorch-cifar.

Users write parameter names in configs (``prune.exclude``, ``prune.layer_fractions``), so
layers have names: the output layer is ``fc`` in every model; ``mlp`` and
``lenet_300_100`` have hidden layers ``fc1``, ``fc2``, ...; Conv-2/4/6 ``conv1`` ...
``convN``, ``fc1``, ``fc2``; resnets and VGG use torchvision's names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0``; VGG's ``features.N``). ``lth layers``
lists a model's prunable tensors.

Use :func:`build_model`; the raw builders in :data:`MODELS` return modules with
PyTorch's default initialisation, which :func:`build_model` replaces.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from imp.base.config import Config
from imp.data import Dataset
from imp.base.errors import UserError, did_you_mean

Shape = tuple[int, int, int]


class MLP(nn.Module):
    """Fully connected ReLU network: flatten, hidden layers ``fc1``, ``fc2``, ... (each
    Linear then ReLU), output layer ``fc``. ``widths`` holds one or more hidden widths."""

    def __init__(self, in_features: int, widths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        for i, width in enumerate(widths, start=1):
            self.add_module(f"fc{i}", nn.Linear(in_features, width))
            in_features = width
        self.fc = nn.Linear(in_features, num_classes)
        self.relu = nn.ReLU()
        self.hidden_layers = len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i in range(1, self.hidden_layers + 1):
            x = self.relu(getattr(self, f"fc{i}")(x))
        return self.fc(x)

    def after_first(self) -> nn.Sequential:
        """The network from ``fc1``'s output (before its ReLU) to the logits, sharing this
        model's layers and parameter names (``fc2.weight``, ..., ``fc.weight``):
        :func:`landscape.fastpath.mlp_sums` runs only this part at each interpolation point."""
        rest = nn.Sequential()
        for name in [f"fc{i}" for i in range(2, self.hidden_layers + 1)] + ["fc"]:
            rest.add_module(f"relu_before_{name}", nn.ReLU())
            rest.add_module(name, getattr(self, name))
        return rest


class ConvNet(nn.Module):
    """Conv-2/4/6 (Frankle & Carbin 2019, Figure 2): pairs of 3x3 conv + ReLU layers
    ``conv1``, ``conv2``, ..., each pair followed by a 2x2 max pool, then fully connected
    ``fc1`` (256) and ``fc2`` (256) with ReLU, and the output layer ``fc``.

    ``pair_widths`` holds the channels of each pair (64, 128, 256 for Conv-6); ``pooled``
    is the spatial size (H, W) after the last pool.
    """

    def __init__(self, in_channels: int, pair_widths: list[int], pooled: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        c = in_channels
        for i, width in enumerate(width for width in pair_widths for _ in range(2)):
            self.add_module(f"conv{i + 1}", nn.Conv2d(c, width, 3, padding=1))  # with bias, as in OpenLTH
            c = width
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c * pooled[0] * pooled[1], 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc = nn.Linear(256, num_classes)
        self.relu = nn.ReLU()
        self.convs = 2 * len(pair_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.convs + 1):
            x = self.relu(getattr(self, f"conv{i}")(x))
            if i % 2 == 0:
                x = self.pool(x)
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc(x)


class BasicBlock(nn.Module):
    """Residual block of two 3x3 conv+BN layers (He et al. 2016, as in OpenLTH), with
    torchvision's names: ``conv1``, ``bn1``, ``conv2``, ``bn2``, and ``downsample`` (a
    strided 1x1 conv ``downsample.0`` + BN ``downsample.1``) when the shape changes;
    otherwise the shortcut is the identity. Convolutions have no bias.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        changes_shape = stride != 1 or c_in != c_out
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                           if changes_shape else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet with torchvision's names: stem ``conv1`` + ``bn1`` + ReLU, stages
    ``layer1``, ``layer2``, ... of BasicBlocks, global average pool, output layer ``fc``.

    ``stages`` lists (width, number of blocks); every stage after the first starts
    with a stride-2 block.
    """

    def __init__(self, in_channels: int, stages: list[tuple[int, int]], num_classes: int) -> None:
        super().__init__()
        c = stages[0][0]
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        for i, (width, blocks) in enumerate(stages):
            layer = []
            for j in range(blocks):
                layer.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
                c = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.stages = len(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _pooled_size(name: str, input_shape: Shape, pools: int) -> tuple[int, int]:
    """Spatial size after ``pools`` 2x2 max pools; ValueError if it would vanish."""
    h, w = input_shape[1] >> pools, input_shape[2] >> pools
    if h < 1 or w < 1:
        raise UserError(
            f"model {name!r} applies {pools} 2x2 max pools and needs inputs of at least "
            f"{2 ** pools}x{2 ** pools}, got {input_shape[1]}x{input_shape[2]}"
        )
    return h, w


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015; OpenLTH's cifar_vgg), with
    torchvision's names: ``features.N`` (3x3 conv with bias, BN, ReLU for each int in
    ``plan``, 2x2 max pool for each 'M'), global average pool, output layer ``fc``.
    """

    def __init__(self, in_channels: int, plan: list[int | str], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(item, int)
            layers += [nn.Conv2d(c, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            c = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


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
    return MLP(input_shape[0] * input_shape[1] * input_shape[2], widths or (300, 100), num_classes)


def _lenet_300_100(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
    """LeNet-300-100 (Frankle & Carbin 2019, Figure 2)."""
    _reject("lenet_300_100", widths, width)
    return _mlp(input_shape, num_classes, (300, 100), 0)


def _frankle_conv(name: str, pair_widths: list[int]) -> Callable[..., nn.Module]:
    def build(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
        """Conv-2/4/6 of Frankle & Carbin (2019): VGG-like convs, then FC 256-256-classes."""
        _reject(name, widths, width)
        pooled = _pooled_size(name, input_shape, len(pair_widths))
        return ConvNet(input_shape[0], pair_widths, pooled, num_classes)

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


def _vgg(name: str, plan: list[int | str]) -> Callable[..., nn.Module]:
    def build(input_shape: Shape, num_classes: int, widths: tuple[int, ...], width: int) -> nn.Module:
        """CIFAR VGG with BatchNorm; channel counts scaled by width/64."""
        _reject(name, widths, width, allow_width=True)
        _pooled_size(name, input_shape, plan.count("M"))
        w = width or 64
        scaled = [c if c == "M" else max(1, int(c) * w // 64) for c in plan]
        return VGG(input_shape[0], scaled, num_classes)

    return build


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512]
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "lenet_300_100": _lenet_300_100,
    "conv2": _frankle_conv("conv2", [64]),
    "conv4": _frankle_conv("conv4", [64, 128]),
    "conv6": _frankle_conv("conv6", [64, 128, 256]),
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


def build_initial_model(config: "Config", data: "Dataset", init_seed: int) -> nn.Module:
    """The model of a run's config at its seeded initialisation, on the data's device."""
    generator = torch.Generator().manual_seed(init_seed)
    model = build_model(config.model.name, data.input_shape, data.num_classes,
                        widths=config.model.widths, width=config.model.width, generator=generator)
    return model.to(data.train.device)
