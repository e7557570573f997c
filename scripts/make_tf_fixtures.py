"""Generate the TensorFlow/Keras ONNX test fixtures (``tf_cnn``, ``tf_gap``).

What it makes (in ``tests/fixtures/``):

* ``tf_cnn.onnx`` / ``tf_cnn.npz`` -- channels-last Keras CNN:
  Conv2D+BatchNorm+ReLU, a residual Add block, DepthwiseConv2D+BN+ReLU,
  1x1 Conv2D, MaxPool2D, then Flatten -> Dense -> ReLU -> Dense.
* ``tf_gap.onnx`` / ``tf_gap.npz`` -- channels-last Keras CNN with a
  Concatenate of two conv branches, a squeeze-excite block
  (GAP -> Dense -> ReLU -> Dense -> sigmoid -> Reshape -> Multiply) and a
  GlobalAveragePooling2D -> Dense head.

Both take input ``x`` of shape ``[N, 16, 16, 3]`` float32 (dynamic batch) and
are exported with tf2onnx (``from_keras``) at opset 13. All weights, biases
and BatchNorm statistics are randomised from a fixed seed so that BN is not an
identity. Each ``.npz`` holds a fixed input ``x`` (batch 2) and the Keras
output ``y`` for it (inference mode).

Versions used to produce the committed files (Python 3.11):
    tensorflow-cpu 2.21.0 (Keras 3.15.1), tf2onnx 1.17.0, onnx 1.23.2,
    onnxruntime 1.31.1, numpy 2.4.6, protobuf 7.36.2

How to run (in a virtualenv OUTSIDE the project, never the project's .venv):
    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 \
        onnx==1.23.2 onnxruntime==1.31.1 numpy==2.4.6
    /tmp/tfenv/bin/python scripts/make_tf_fixtures.py

The script also verifies each model (onnx.checker, onnxruntime at batch 2 and
3 against Keras, rtol 1e-4). CI does not run this; the outputs are committed.
Reruns give the same structure and weights; a few tf2onnx-generated names
(``const_fold_opt__NN``) may be numbered differently.
"""
import os
import sys

# tf2onnx names some generated nodes from counters whose order depends on set
# iteration; pin the hash seed (by re-exec) to keep most names stable.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from fixturelib import verify_fixture

SEED = 0
OPSET = 13
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
L = tf.keras.layers


def seed_all(seed=SEED):
    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)


def randomise(model, rng):
    """Give every weight a random value; BN stats get non-trivial values."""
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = ws
            c = gamma.shape
            ws = [
                rng.uniform(0.5, 1.5, c),
                rng.normal(0.0, 0.2, c),
                rng.normal(0.0, 0.3, c),
                rng.uniform(0.5, 2.0, c),
            ]
        else:
            new = []
            for w in ws:
                if w.ndim == 1:  # bias
                    new.append(rng.normal(0.0, 0.1, w.shape))
                else:
                    fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
                    if isinstance(layer, L.DepthwiseConv2D):
                        fan_in = int(np.prod(w.shape[:2]))
                    new.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape))
            ws = new
        layer.set_weights([np.asarray(w, np.float32) for w in ws])


def conv_bn_relu(y, filters, k, name):
    y = L.Conv2D(filters, k, padding="same", use_bias=False, name=f"{name}_conv")(y)
    y = L.BatchNormalization(name=f"{name}_bn")(y)
    return L.ReLU(name=f"{name}_relu")(y)


def build_cnn():
    x = L.Input((16, 16, 3), name="x")
    a = conv_bn_relu(x, 8, 3, "stem")
    # residual block
    r = conv_bn_relu(a, 8, 3, "res1")
    r = L.Conv2D(8, 3, padding="same", use_bias=False, name="res2_conv")(r)
    r = L.BatchNormalization(name="res2_bn")(r)
    y = L.Add(name="res_add")([a, r])
    y = L.ReLU(name="res_relu")(y)
    # depthwise + pointwise
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw_conv")(y)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(name="dw_relu")(y)
    y = L.Conv2D(16, 1, use_bias=True, name="pw_conv")(y)
    y = L.ReLU(name="pw_relu")(y)
    y = L.MaxPooling2D(2, name="pool")(y)  # -> 8x8x16
    y = L.Flatten(name="flatten")(y)  # NHWC flatten order: (h, w, c)
    y = L.Dense(32, name="fc1")(y)
    y = L.ReLU(name="fc1_relu")(y)
    y = L.Dense(10, name="fc2")(y)
    return tf.keras.Model(x, y, name="tf_cnn")


def build_gap():
    x = L.Input((16, 16, 3), name="x")
    a = conv_bn_relu(x, 8, 3, "stem")
    b1 = L.Conv2D(8, 1, activation="relu", name="b1_conv")(a)
    b2 = L.Conv2D(8, 3, padding="same", activation="relu", name="b2_conv")(a)
    y = L.Concatenate(axis=-1, name="cat")([b1, b2])  # 16 channels
    # squeeze-excite
    s = L.GlobalAveragePooling2D(name="se_gap")(y)
    s = L.Dense(4, name="se_fc1")(s)
    s = L.ReLU(name="se_relu")(s)
    s = L.Dense(16, name="se_fc2")(s)
    s = L.Activation("sigmoid", name="se_sigmoid")(s)
    s = L.Reshape((1, 1, 16), name="se_reshape")(s)
    y = L.Multiply(name="se_mul")([y, s])
    y = L.Conv2D(16, 3, padding="same", name="head_conv")(y)
    y = L.BatchNormalization(name="head_bn")(y)
    y = L.ReLU(name="head_relu")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(10, name="fc")(y)
    return tf.keras.Model(x, y, name="tf_gap")


def export(name, model, rng):
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="x"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    path = OUT / f"{name}.onnx"
    onnx.save(proto, str(path))

    x2 = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    x3 = rng.standard_normal((3, 16, 16, 3)).astype(np.float32)
    y2 = model(x2, training=False).numpy()
    y3 = model(x3, training=False).numpy()
    np.savez(OUT / f"{name}.npz", x=x2, y=y2)

    verify_fixture(path, [(x2, y2), (x3, y3)])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    print("tensorflow", tf.__version__, "tf2onnx", tf2onnx.__version__,
          "onnx", onnx.__version__, "onnxruntime", ort.__version__)
    for name, build in (("tf_cnn", build_cnn), ("tf_gap", build_gap)):
        seed_all()
        rng = np.random.default_rng(SEED)
        model = build()
        randomise(model, rng)
        export(name, model, rng)


if __name__ == "__main__":
    main()
