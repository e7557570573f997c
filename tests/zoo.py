"""Zoo of small PyTorch models and an ONNX exporter helper for tests and benchmarks.

Each model exercises a graph pattern a channel pruner must understand (residual adds,
concatenation, depthwise/grouped convs, channel split/shuffle, resizing, flatten into
Linear, channels-last LayerNorm, ...). Kept independent of ``onnxprune`` so the tests
do not validate the tool with itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import pathlib
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Builder = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]

EXPORTERS = ("dynamo", "dynamo_noopt", "legacy")


def randomize_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm/LayerNorm non-trivial statistics and affine params.

    Freshly initialised norms are identities in eval mode, which would hide bugs in
    BN folding and per-channel slicing of norm parameters.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return module


def _finish(model: nn.Module, *shape: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Randomise norms, switch to eval and build a deterministic example input."""
    randomize_norms(model)
    return model.eval(), (torch.randn(*shape),)


def conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: nn.Module | None = None
) -> nn.Sequential:
    """Conv (no bias) + BN (+ activation): the unit BN folding must collapse."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- resnet


class BasicBlock(nn.Module):
    """ResNet basic block; projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride, act=nn.ReLU()), conv_bn(cout, cout, 3))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def build_resnet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        conv_bn(3, 16, act=nn.ReLU()),
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    return _finish(model, 2, 3, 16, 16)


# --------------------------------------------------------------------------- densenet


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-Conv whose output is concatenated onto its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.f(x)], dim=1)


def build_densenet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    c0, growth = 16, 8
    c = c0 + 3 * growth
    model = nn.Sequential(
        nn.Conv2d(3, c0, 3, padding=1, bias=False),
        *(DenseLayer(c0 + i * growth, growth) for i in range(3)),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c // 2, 1, bias=False),
        nn.AvgPool2d(2),
        nn.BatchNorm2d(c // 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c // 2, 10),
    )
    return _finish(model, 2, 3, 16, 16)


# --------------------------------------------------------------------------- mobilenetv2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6()))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6()), conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def build_mobilenetv2() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.ReLU6()),
        InvertedResidual(16, 16, 1, 1),
        InvertedResidual(16, 24, 2, 4),
        InvertedResidual(24, 24, 1, 4),
        conv_bn(24, 64, 1, act=nn.ReLU6()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    return _finish(model, 2, 3, 32, 32)


# --------------------------------------------------------------------------- mobilenetv3


class SqueezeExcite(nn.Module):
    """Channel gate: its two 1x1 convs are tied to the gated tensor's channels."""

    def __init__(self, c: int, reduce: int = 4) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, c // reduce, 1),
            nn.ReLU(),
            nn.Conv2d(c // reduce, c, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class V3Block(nn.Module):
    """MobileNetV3 bneck; ``dw_mult`` > 1 makes the depthwise conv a channel multiplier."""

    def __init__(self, cin: int, hidden: int, cout: int, dw_mult: int = 1) -> None:
        super().__init__()
        dw_out = hidden * dw_mult
        self.expand = conv_bn(cin, hidden, 1, act=nn.Hardswish()) if hidden != cin else nn.Identity()
        self.dw = conv_bn(hidden, dw_out, 3, groups=hidden, act=nn.Hardswish())
        self.se = SqueezeExcite(dw_out)
        self.project = conv_bn(dw_out, cout, 1)
        self.use_res = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_res else y


def build_mobilenetv3() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.Hardswish()),
        V3Block(16, 16, 16),
        V3Block(16, 32, 24, dw_mult=2),
        conv_bn(24, 96, 1, act=nn.Hardswish()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 64),
        nn.Hardswish(),
        nn.Linear(64, 10),
    )
    return _finish(model, 2, 3, 32, 32)


# --------------------------------------------------------------------------- resnext


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce, grouped 3x3, 1x1 expand: pruning must keep group sizes equal."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, groups: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, width, 1, act=nn.ReLU()),
            conv_bn(width, width, 3, stride, groups=groups, act=nn.ReLU()),
            conv_bn(width, cout, 1),
        )
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def build_resnext() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        conv_bn(3, 32, act=nn.ReLU()),
        ResNeXtBottleneck(32, 32, 64),
        ResNeXtBottleneck(64, 32, 64),
        ResNeXtBottleneck(64, 64, 128, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    return _finish(model, 2, 3, 16, 16)


# --------------------------------------------------------------------------- shufflenet / ghost


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet view-transpose-view; the batch size stays symbolic in the export."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit; stride 1 splits channels (chunk or split), stride 2 runs two branches."""

    def __init__(self, cin: int, cout: int, stride: int = 1, use_split: bool = False) -> None:
        super().__init__()
        half = cout // 2
        self.stride, self.use_split = stride, use_split
        branch_in = cin // 2 if stride == 1 else cin
        self.branch2 = nn.Sequential(
            conv_bn(branch_in, half, 1, act=nn.ReLU()),
            conv_bn(half, half, 3, stride, groups=half),
            conv_bn(half, half, 1, act=nn.ReLU()),
        )
        if stride != 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, half, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = torch.split(x, x.shape[1] // 2, dim=1) if self.use_split else x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out, 2)


class GhostModule(nn.Module):
    """GhostNet: primary conv + cheap depthwise conv, concatenated then sliced to ``cout``."""

    def __init__(self, cin: int, cout: int, ratio: int = 3) -> None:
        super().__init__()
        self.cout = cout
        init = math.ceil(cout / ratio)
        self.primary = conv_bn(cin, init, 1, act=nn.ReLU())
        self.cheap = conv_bn(init, init * (ratio - 1), 3, groups=init, act=nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.cout]


def build_shufflenet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        conv_bn(3, 24, act=nn.ReLU()),
        ShuffleUnit(24, 24),
        ShuffleUnit(24, 32, stride=2),
        GhostModule(32, 28),  # 10 primary + 20 cheap = 30 channels, sliced to 28
        ShuffleUnit(28, 28, use_split=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(28, 10),
    )
    return _finish(model, 2, 3, 16, 16)


# --------------------------------------------------------------------------- vgg


class VGG(nn.Module):
    """Conv stack whose C x 4 x 4 map is flattened into a Linear (channel -> 16 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            conv_bn(16, 32, act=nn.ReLU()),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_vgg() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return _finish(VGG(), 2, 3, 32, 32)


# --------------------------------------------------------------------------- unet


class UNet(nn.Module):
    """Three-level UNet: ConvTranspose, nearest Upsample and bilinear interpolate decoders."""

    def __init__(self) -> None:
        super().__init__()
        relu = nn.ReLU
        self.enc1 = nn.Sequential(conv_bn(3, 8, act=relu()), conv_bn(8, 8, act=relu()))
        self.enc2 = conv_bn(8, 16, act=relu())
        self.enc3 = conv_bn(16, 32, act=relu())
        self.mid = conv_bn(32, 32, act=relu())
        self.pool = nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec3 = conv_bn(16 + 32, 32, act=relu())
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = conv_bn(32 + 16, 16, act=relu())
        self.dec1 = conv_bn(16 + 8, 8, act=relu())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        m = self.mid(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(m), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        up1 = F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        d1 = self.dec1(torch.cat([up1, e1], dim=1))
        return self.head(d1)


def build_unet() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return _finish(UNet(), 2, 3, 32, 32)


# --------------------------------------------------------------------------- prelu / layer-scale


class PReLULayerScale(nn.Module):
    """PReLU + [C,1,1] layer-scale residual block, then a many-activation mixer."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, c, act=nn.PReLU(c))
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act1 = nn.PReLU(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.1)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 1), act)
            for act in (nn.LeakyReLU(0.1), nn.ELU(), nn.GELU(), nn.SiLU(), nn.Tanh())
        )
        self.value = nn.Conv2d(c, c, 1)
        self.gate = nn.Conv2d(c, c, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)
        with torch.no_grad():
            # Distinct per-channel slopes expose channel mix-ups; the second PReLU gets an equal
            # copy on purpose, so exporters deduplicate the two slope initializers.
            self.act1.weight.copy_(torch.rand(c) * 0.5)
            self.stem[2].weight.copy_(self.act1.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.gamma * self.conv2(self.act1(self.conv1(x)))
        y = self.value(x) * torch.sigmoid(self.gate(x))
        for branch in self.branches:
            y = y + branch(x)
        return self.fc(torch.flatten(self.pool(y), 1))


def build_prelu_layerscale() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return _finish(PReLULayerScale(), 2, 3, 16, 16)


# --------------------------------------------------------------------------- convnext


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm done the ConvNeXt way: permute to NHWC and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, NHWC LayerNorm + Linear MLP, per-channel layer-scale, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        self.gamma = nn.Parameter(torch.rand(c) + 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gamma * self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem, two blocks, channels-first downsample, mean-pool + LayerNorm head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), LayerNorm2d(32))
        self.block1 = ConvNeXtBlock(32)
        self.down = nn.Sequential(LayerNorm2d(32), nn.Conv2d(32, 48, 2, stride=2))
        self.block2 = ConvNeXtBlock(48)
        self.norm = nn.LayerNorm(48)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(self.norm(x.mean((-2, -1))))


def build_convnext_ln() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return _finish(ConvNeXt(), 2, 3, 32, 32)


MODELS: dict[str, Builder] = {
    "resnet": build_resnet,
    "densenet": build_densenet,
    "mobilenetv2": build_mobilenetv2,
    "mobilenetv3": build_mobilenetv3,
    "resnext": build_resnext,
    "shufflenet": build_shufflenet,
    "vgg": build_vgg,
    "unet": build_unet,
    "prelu_layerscale": build_prelu_layerscale,
    "convnext_ln": build_convnext_ln,
}


# --------------------------------------------------------------------------- benchmark models


class Bottleneck(nn.Module):
    """torchvision ResNet-50 (v1.5) bottleneck: the stride sits on the 3x3 conv."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            conv_bn(cin, width, 1, act=nn.ReLU()),
            conv_bn(width, width, 3, stride, act=nn.ReLU()),
            conv_bn(width, cout, 1),
        )
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def build_resnet50() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for j in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    return _finish(nn.Sequential(*layers), 1, 3, 224, 224)


def build_mobilenetv2_full() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6())]
    cin = 32
    # (expand ratio t, channels c, repeats n, first stride s) from the MobileNetV2 paper, Table 2
    settings = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
    )
    for t, c, n, s in settings:
        for j in range(n):
            layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
            cin = c
    layers += [
        conv_bn(cin, 1280, 1, act=nn.ReLU6()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(1280, 1000),
    ]
    return _finish(nn.Sequential(*layers), 1, 3, 224, 224)


BENCH_MODELS: dict[str, Builder] = {
    "resnet50": build_resnet50,
    "mobilenetv2_full": build_mobilenetv2_full,
}


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow exporter warnings, log records and progress prints so test output stays readable."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | pathlib.Path,
    exporter: str,
) -> pathlib.Path:
    """Export ``module`` to ONNX with input "x", output "y" and a dynamic batch dimension.

    ``dynamo`` runs the onnxscript optimizer (BN folded, weights possibly in ``<path>.data``),
    ``dynamo_noopt`` keeps BatchNormalization nodes, ``legacy`` is the TorchScript exporter.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    common = dict(input_names=["x"], output_names=["y"], verbose=False)
    with _quiet(), torch.no_grad():
        if exporter in ("dynamo", "dynamo_noopt"):
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                module,
                example_inputs,
                str(path),
                dynamo=True,
                optimize=exporter == "dynamo",
                dynamic_shapes=tuple({0: batch} for _ in example_inputs),
                **common,
            )
        elif exporter == "legacy":
            torch.onnx.export(
                module,
                example_inputs,
                str(path),
                dynamo=False,
                opset_version=17,
                do_constant_folding=True,
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                **common,
            )
        else:
            raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    return path
