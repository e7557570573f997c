"""Generate the PaddlePaddle ONNX test fixtures (``paddle_cnn``, ``paddle_gap``).

What it makes (in ``tests/fixtures/``):

* ``paddle_cnn.onnx`` / ``paddle_cnn.npz`` -- NCHW Paddle CNN:
  Conv2D(with bias)+BatchNorm+ReLU, a residual add block, a depthwise
  Conv2D+BN+Hardswish, 1x1 Conv2D+ReLU, MaxPool2D, then
  flatten -> Linear -> ReLU -> Linear.
* ``paddle_gap.onnx`` / ``paddle_gap.npz`` -- NCHW Paddle CNN with a concat
  of two conv branches, a squeeze-excite block
  (AdaptiveAvgPool2D(1) -> 1x1 Conv -> ReLU -> 1x1 Conv -> Sigmoid ->
  multiply), Conv+BN+ReLU, AdaptiveAvgPool2D(1) -> flatten -> Linear head.

Both take input ``x`` of shape ``[N, 3, 16, 16]`` float32 with a dynamic batch
(``paddle.static.InputSpec([None, 3, 16, 16])``) and are exported with
``paddle.onnx.export`` (paddle2onnx) at opset 13. All weights, biases and
BatchNorm statistics are randomised from a fixed seed so that BN is not an
identity. Each ``.npz`` holds a fixed input ``x`` (batch 2) and Paddle's
own eval-mode output ``y`` for it.

Versions used to produce the committed files (Python 3.11):
    paddlepaddle 3.3.1 (CPU), paddle2onnx 2.1.0, onnx 1.17.0 (pinned by
    paddle2onnx), onnxruntime 1.31.1, numpy 2.4.6, protobuf 7.36.2,
    polygraphy 0.53.6, onnx_graphsurgeon 0.6.1, sympy 1.14.0

How to run (in a virtualenv OUTSIDE the project, never the project's .venv;
kept separate from the TensorFlow one because paddle2onnx pins onnx):
    python3 -m venv /tmp/pdenv
    /tmp/pdenv/bin/pip install paddlepaddle==3.3.1 paddle2onnx==2.1.0 \
        onnx==1.17.0 onnxruntime==1.31.1 numpy==2.4.6 \
        polygraphy==0.53.6 onnx_graphsurgeon==0.6.1 sympy==1.14.0

(paddle2onnx runs Polygraphy constant folding after export; Polygraphy
pip-installs onnx_graphsurgeon and sympy on first use if they are missing,
so install them up front.)
    /tmp/pdenv/bin/python scripts/make_paddle_fixtures.py

The script also verifies each model (onnx.checker, onnxruntime at batch 2 and
3 against Paddle, rtol 1e-4). CI does not run this; the outputs are committed.
"""
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import paddle
import paddle.nn as nn
import paddle2onnx

from fixturelib import verify_fixture

SEED = 0
OPSET = 13
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def seed_all(seed=SEED):
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def randomise(model, rng):
    """Give every parameter/BN buffer a random value so BN is not identity."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.BatchNorm2D):
            c = layer.weight.shape
            layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.bias.set_value(rng.normal(0.0, 0.2, c).astype(np.float32))
            layer._mean.set_value(rng.normal(0.0, 0.3, c).astype(np.float32))
            layer._variance.set_value(rng.uniform(0.5, 2.0, c).astype(np.float32))
        elif isinstance(layer, (nn.Conv2D, nn.Linear)):
            w = layer.weight
            if isinstance(layer, nn.Conv2D):
                fan_in = int(np.prod(w.shape[1:]))
            else:
                fan_in = w.shape[0]  # Linear weight is [in, out]
            w.set_value(rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(np.float32))
            if layer.bias is not None:
                b = layer.bias
                b.set_value(rng.normal(0.0, 0.1, b.shape).astype(np.float32))


class ConvBN(nn.Layer):
    def __init__(self, cin, cout, k, groups=1, bias=True, act="relu"):
        super().__init__()
        self.conv = nn.Conv2D(cin, cout, k, padding=k // 2, groups=groups,
                              bias_attr=None if bias else False)
        self.bn = nn.BatchNorm2D(cout)
        self.act = {"relu": nn.ReLU(), "hardswish": nn.Hardswish(), None: None}[act]

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class PaddleCNN(nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = ConvBN(3, 8, 3, bias=True)  # conv with bias -> BN -> ReLU
        self.res1 = ConvBN(8, 8, 3, bias=False)
        self.res2 = ConvBN(8, 8, 3, bias=False, act=None)
        self.relu = nn.ReLU()
        self.dw = ConvBN(8, 8, 3, groups=8, bias=False, act="hardswish")
        self.pw = nn.Conv2D(8, 16, 1)
        self.pw_relu = nn.ReLU()
        self.pool = nn.MaxPool2D(2)  # -> 16 x 8 x 8
        self.flatten = nn.Flatten()  # NCHW flatten order: (c, h, w)
        self.fc1 = nn.Linear(16 * 8 * 8, 32)
        self.fc1_relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        a = self.stem(x)
        y = self.relu(a + self.res2(self.res1(a)))
        y = self.dw(y)
        y = self.pool(self.pw_relu(self.pw(y)))
        y = self.flatten(y)
        return self.fc2(self.fc1_relu(self.fc1(y)))


class PaddleGAP(nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = ConvBN(3, 8, 3, bias=False)
        self.b1 = nn.Conv2D(8, 8, 1)
        self.b2 = nn.Conv2D(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        # squeeze-excite, PaddleClas MobileNetV3 style (1x1 convs)
        self.se_pool = nn.AdaptiveAvgPool2D(1)
        self.se_fc1 = nn.Conv2D(16, 4, 1)
        self.se_relu = nn.ReLU()
        self.se_fc2 = nn.Conv2D(4, 16, 1)
        self.se_act = nn.Sigmoid()
        self.head = ConvBN(16, 16, 3, bias=True)
        self.gap = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = self.stem(x)
        y = paddle.concat([self.relu(self.b1(a)), self.relu(self.b2(a))], axis=1)
        s = self.se_act(self.se_fc2(self.se_relu(self.se_fc1(self.se_pool(y)))))
        y = paddle.multiply(y, s)
        y = self.gap(self.head(y))
        y = paddle.flatten(y, 1)
        return self.fc(y)


def export(name, model, rng):
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, 16, 16], "float32", "x")]
    path = OUT / f"{name}.onnx"
    tmp = Path(tempfile.mkdtemp())
    try:
        paddle.onnx.export(model, str(tmp / name), input_spec=spec,
                           opset_version=OPSET)
        shutil.copyfile(tmp / f"{name}.onnx", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    x2 = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    x3 = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    with paddle.no_grad():
        y2 = model(paddle.to_tensor(x2)).numpy()
        y3 = model(paddle.to_tensor(x3)).numpy()
    np.savez(OUT / f"{name}.npz", x=x2, y=y2)

    verify_fixture(path, [(x2, y2), (x3, y3)])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    paddle.set_device("cpu")
    print("paddle", paddle.__version__, "paddle2onnx", paddle2onnx.__version__,
          "onnx", onnx.__version__, "onnxruntime", ort.__version__)
    for name, cls in (("paddle_cnn", PaddleCNN), ("paddle_gap", PaddleGAP)):
        seed_all()
        rng = np.random.default_rng(SEED)
        with paddle.utils.unique_name.guard():  # parameter names per model
            model = cls()
        randomise(model, rng)
        export(name, model, rng)


if __name__ == "__main__":
    main()
