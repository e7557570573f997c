"""The digits example: a small CNN trained on scikit-learn's handwritten digits (8x8 images that
ship with scikit-learn: real data, no download), with a fixed train/test split.

    python scripts/digits.py --out models/      # trains, exports models/digits_cnn.onnx and
                                                 # models/digits_calib.npz (test images + labels)

It needs torch and scikit-learn (`pip install -e .[torch,test]`); onnxprune itself does not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SEED = 0


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images as float32 [N, 1, 8, 8] in [0, 1], 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return x_train, y_train, x_test, y_test


def make_model():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        """conv-bn-relu x3 with a max-pool, then a flatten -> dense -> dense head."""

        def __init__(self, width: int = 32):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.head(self.features(x))

    return DigitsCNN()


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = 30, lr: float = 2e-3, seed: int = SEED, masks=None):
    """Plain Adam training with a fixed seed; `masks` (optional callback) runs after every step."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            optimizer.step()
            if masks is not None:
                masks(model)
    model.eval()
    return model


def accuracy_torch(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(model, path: Path) -> Path:
    import torch

    example = torch.zeros(2, 1, 8, 8)
    torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    return path


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models", help="output folder (default models/)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    x_train, y_train, x_test, y_test = load_digits_split()
    model = train(make_model(), x_train, y_train, epochs=args.epochs)
    print(f"test accuracy: {accuracy_torch(model, x_test, y_test):.4f}")
    torch.save(model.state_dict(), out / "digits_cnn.pt")
    export(model, out / "digits_cnn.onnx")
    np.savez(out / "digits_calib.npz", x=x_test, labels=y_test)
    print(f"wrote {out / 'digits_cnn.onnx'}, {out / 'digits_cnn.pt'} and {out / 'digits_calib.npz'}")


if __name__ == "__main__":
    main()
