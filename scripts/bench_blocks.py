"""Depth against width: removing whole residual blocks (`--drop-blocks N`, ranked by ShortGPT's
block influence) against channel pruning to the same MACs, side by side in one run.

Models: the timm-style ViT of tests/transformer_zoo.py made 6 layers deep (12 residual blocks:
attention and MLP) and a hand-written ResNet-style CNN (3 stages of 3 BasicBlocks, 7 of them with
an identity shortcut), random init (BatchNorm statistics randomised), dynamo export.  Blocks and
channels are ranked on 32 synthetic calibration inputs; drift is measured on 32 other (held-out)
inputs as the relative L2 error ||y - y'|| / ||y|| of the output, plus top-1 agreement with the
original.  The same ResNet trained on scikit-learn's digits (`digits-resnet`) gives the accuracy
on the 360 test images instead (top-1 column).  Channel
pruning uses `--target-macs` at the MACs the block removal kept (uniform, activation criterion on
the same calibration inputs; `--criterion l1` too).

    python scripts/bench_blocks.py [--models vit cnn digits-resnet] [--max-blocks 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import onnxprune  # noqa: E402
import transformer_zoo as tz  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + identity)


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), depth: int = 3, classes: int = 10, channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for k, w in enumerate(widths):
            layers += [BasicBlock(cin, w, 1 if k == 0 else 2)] + [BasicBlock(w, w) for _ in range(depth - 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def build_cnn():
    torch.manual_seed(0)
    model = ResNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
    return model.eval(), (torch.randn(2, 3, 32, 32),)


def build_vit():
    torch.manual_seed(0)
    return tz.ViT(depth=6).eval(), (torch.randn(2, 3, 32, 32),)


def images(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)}


def synthetic(build):
    """A random-init model: calibration and held-out inputs are normal noise, no labels."""
    module, inputs = build()
    return module, inputs, images(32, 1), images(32, 2), None


def digits_resnet():
    """The same ResNet shape on 1x8x8 digits (scikit-learn's, shipped with the package), trained
    20 epochs: calibration on 64 training images, drift and accuracy on the 360 test images."""
    from digits import load_digits_split, train

    x_train, y_train, x_test, y_test = load_digits_split()
    torch.manual_seed(0)
    module = train(ResNet(channels=1), x_train, y_train, epochs=20)
    return module, (torch.from_numpy(x_test[:2]),), {"x": x_train[:64]}, {"x": x_test}, y_test


MODELS = {"vit": lambda: synthetic(build_vit), "cnn": lambda: synthetic(build_cnn), "digits-resnet": digits_resnet}


def outputs(model, feeds) -> np.ndarray:
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def drift(reference: np.ndarray, pruned: np.ndarray, labels) -> tuple[float, float]:
    """Relative L2 error of the outputs, and accuracy with labels (else top-1 agreement)."""
    rel = float(np.linalg.norm(pruned - reference) / np.linalg.norm(reference))
    return rel, float(np.mean(pruned.argmax(-1) == (reference.argmax(-1) if labels is None else labels)))


def measure(name: str, max_blocks: int, workdir: Path) -> list[dict]:
    module, inputs, calib, held, labels = MODELS[name]()
    path = tz.export(module, inputs, workdir / f"{name}.onnx", "dynamo")
    model = onnxprune.load(path)
    reference = outputs(path, held)
    if labels is not None:
        print(f"{name}: original accuracy {np.mean(reference.argmax(-1) == labels):.2%}", file=sys.stderr)
    blocks = model.residual_blocks
    print(f"{name}: {len(blocks.blocks)} removable residual blocks, {len(blocks.refused)} kept "
          f"({blocks.refused[0].reason if blocks.refused else '-'})", file=sys.stderr)
    rows = []
    for n in range(1, min(max_blocks, len(blocks.blocks)) + 1):
        start = time.perf_counter()
        dropped = model.prune(drop_blocks=n, data=calib)
        seconds = time.perf_counter() - start
        kept = dropped.after.macs / dropped.before.macs
        row = {"model": name, "blocks": n, "which": ", ".join(b.module or b.add for b in dropped.plan.blocks),
               "macs_kept": kept, "drop": drift(reference, outputs(dropped.model, held), labels), "drop_seconds": seconds}
        for criterion in ("activation", "l1"):
            channels = model.prune(criterion=criterion, data=calib, target_macs=kept)
            row[criterion] = (channels.after.macs / channels.before.macs,) + drift(reference, outputs(channels.model, held), labels)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--max-blocks", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in args.models for r in measure(name, args.max_blocks, Path(tmp))]
    print("| model | blocks dropped (branch) | MACs kept | block drop: rel. L2 drift, top-1 | "
          "channels, activation: MACs kept, drift, top-1 | channels, l1: MACs kept, drift, top-1 | drift ratio channels/blocks |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        (d, a), act, l1 = r["drop"], r["activation"], r["l1"]
        print(f"| {r['model']} | {r['blocks']} ({r['which']}) | {r['macs_kept']:.1%} | {d:.3g}, {a:.0%} | "
              f"{act[0]:.1%}, {act[1]:.3g}, {act[2]:.0%} | {l1[0]:.1%}, {l1[1]:.3g}, {l1[2]:.0%} | {act[1] / max(d, 1e-12):.1f}x |")


if __name__ == "__main__":
    main()
