"""Prune a synthetic model over 2 GB (external data) and measure peak memory.

    python scripts/bench_large_model.py [--gb 2.2] [--dir /tmp/onnxprune-large]

Builds a chain of Gemm layers (width D, random float32 weights written straight to the external
data file one layer at a time, so the builder never holds more than one layer), then prunes it
with `onnxprune prune --ratio 0.3` in a child process, once with verification (onnxruntime on
the original and the pruned model) and once with verification replaced by a no-op, and prints each
child's peak RSS (getrusage) as a multiple of the weights' size.  Goal: at most 2x.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 8192


def build(folder: Path, gigabytes: float) -> tuple[Path, int]:
    """Write model.onnx + model.onnx.data with enough DxD layers to exceed `gigabytes`; returns
    the path and the weights' size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    layer_bytes = WIDTH * WIDTH * 4
    layers = int(np.ceil(gigabytes * 1e9 / layer_bytes))
    rng = np.random.default_rng(0)
    nodes, inits, x, offset = [], [], "x", 0
    with open(folder / "model.onnx.data", "wb") as data:
        for k in range(layers):
            weight = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.float32(np.sqrt(WIDTH))
            data.write(weight.tobytes())
            del weight
            stub = TensorProto(name=f"fc{k}.w", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH],
                               data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(layer_bytes))):
                stub.external_data.add(key=key, value=value)
            offset += layer_bytes
            inits += [stub, numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32) * 0.1, f"fc{k}.b")]
            nodes += [helper.make_node("Gemm", [x, f"fc{k}.w", f"fc{k}.b"], [f"fc{k}"], name=f"fc{k}", transB=1),
                      helper.make_node("Relu", [f"fc{k}"], [f"relu{k}"], name=f"relu{k}")]
            x = f"relu{k}"
    inits.append(numpy_helper.from_array(rng.standard_normal((10, WIDTH)).astype(np.float32) * 0.01, "head.w"))
    nodes.append(helper.make_node("Gemm", [x, "head.w"], ["logits"], name="head", transB=1))
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, str(folder / "model.onnx"))
    return folder / "model.onnx", offset + 10 * WIDTH * 4


def child(model: str, output: str, verify: bool) -> None:
    """Run the CLI in this process and print its peak RSS and time as JSON."""
    import onnxprune.verify
    from onnxprune.cli import main

    if not verify:  # neither the original's reference run nor the checks of the pruned model
        onnxprune.verify.reference_outputs = lambda *args, **kwargs: None
        onnxprune.verify.verify = lambda *args, **kwargs: onnxprune.verify.VerifyReport()
    start = time.perf_counter()
    code = main(["prune", model, "-o", output, "--ratio", "0.3", "--json"])
    print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.2, help="weights to generate, in GB (default 2.2)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/onnxprune-large"))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "OUT", "VERIFY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2] == "1")
        return 0
    start = time.perf_counter()
    model, weight_bytes = build(args.dir, args.gb)
    print(f"built {model} with {weight_bytes / 1e9:.2f} GB of weights in {time.perf_counter() - start:.0f} s", flush=True)
    for verify in (True, False):
        out = args.dir / ("pruned.onnx" if verify else "pruned_noverify.onnx")
        done = subprocess.run([sys.executable, __file__, "--child", str(model), str(out), "1" if verify else "0"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        summary = json.loads(done.stdout[:done.stdout.rindex("\n{")]) if result["code"] == 0 else {}
        if result["code"] != 0:
            print(done.stderr)
            return 1
        print(f"verification {'on ' if verify else 'off'}: {result['seconds']:.0f} s, peak RSS "
              f"{result['peak_rss_bytes'] / 1e9:.2f} GB = {result['peak_rss_bytes'] / weight_bytes:.2f}x the weights; "
              f"params {summary['params'][0]:,} -> {summary['params'][1]:,}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
