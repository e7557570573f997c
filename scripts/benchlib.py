"""Shared by the benchmark scripts: the benchmark models, exported once into a work folder."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_vgg11_bn():
    """torchvision's vgg11_bn layout (configuration "A" with BatchNorm, 133M parameters), random
    weights.  Kept here rather than in tests/zoo.py, whose source keys the test-suite's export cache."""
    import torch
    from torch import nn

    sys.path.insert(0, str(REPO / "tests"))
    import zoo  # noqa: PLC0415

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    cin = 3
    for c in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if c == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            cin = c
    layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000)]
    return zoo._finish(nn.Sequential(*layers), 1, 3, 224, 224)


def ensure_exported(workdir: Path, name: str, exporter: str) -> Path:
    """Export a benchmark model (tests/zoo.py's, or vgg11_bn) once; later runs reuse the file."""
    path = Path(workdir) / f"{name}_{exporter}.onnx"
    if not path.is_file():
        sys.path.insert(0, str(REPO / "tests"))
        import zoo  # noqa: PLC0415 - torch is only needed when a model must be exported

        builders = {**zoo.BENCH_MODELS, "vgg11_bn": build_vgg11_bn}
        module, inputs = builders[name]()
        zoo.export(module, inputs, path, exporter)
    return path
