"""Prune a large synthetic decoder-like model (external data) and measure peak memory and time.

    python scripts/bench_large_model.py [--gb 8] [--dir /tmp/onnxprune-large] [--keep]

Builds a decoder-like stack (hidden width D, `layers` blocks of: RMSNorm-like normalisation
x * 1/sqrt(mean(x^2) + eps) * g, an attention-like pair of MatMuls D -> D -> D and a feed-forward
pair D -> 4D -> D with Relu, each added back to the residual stream; random float32 weights
written straight to the external data file one tensor at a time, so the builder never holds more
than one).  The normalisation's mean over the hidden axis pins the residual width, so the inner
widths of the MatMul pairs are what `--ratio 0.3` prunes.

Then, each in a fresh child process:

* `onnxprune prune --ratio 0.3` with verification (onnxruntime on the original and the pruned
  model) and with verification replaced by a no-op;
* for comparison of readers and writers, `onnx.load` (the onnx package's eager loader), onnx-ir's
  `load` (memory-mapped external tensors) and onnxprune's `load_model(mapped=True)`, each touching
  every weight (a sum) the way importance does, and each followed by a save with external data
  (onnxprune's: streamed from the maps to staged files, onnxprune.staging, as prune writes).

Each child reports wall time and its peak RSS above the RSS after its imports (VmHWM, reset
after the imports; it includes file pages that are mapped and touched, which the kernel can drop
again) and, sampled every 20 ms, the peak growth of its anonymous memory (RssAnon: memory that
is really the process's own).  Figures as multiples of the weights'
size.  Goal: pruning peaks at <= 1.2x the weights plus the pruned copy.  The model and the outputs
are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build(folder: Path, gigabytes: float, width: int) -> tuple[Path, int]:
    """Write model.onnx + model.onnx.data with enough blocks to reach `gigabytes` of weights;
    returns the path and the weights' size in bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    ffn = 4 * width
    block_bytes = (2 * width * width + 2 * width * ffn) * 4
    layers = max(1, int(np.ceil(gigabytes * 1e9 / block_bytes)))
    rng = np.random.default_rng(0)
    nodes, inits, offset = [], [], 0
    x = "x"
    with open(folder / "model.onnx.data", "wb") as data:
        def weight(name: str, rows: int, cols: int) -> str:
            nonlocal offset
            for start in range(0, rows, 1024):  # a slab at a time: the builder stays small
                slab = rng.standard_normal((min(1024, rows - start), cols), dtype=np.float32) / np.float32(np.sqrt(rows))
                data.write(slab.tobytes())
            stub = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[rows, cols], data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(rows * cols * 4))):
                stub.external_data.add(key=key, value=value)
            offset += rows * cols * 4
            inits.append(stub)
            return name

        inits += [numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes"),
                  numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps")]
        for k in range(layers):
            for part, inner in (("attn", width), ("ffn", ffn)):
                p = f"l{k}.{part}"
                inits.append(numpy_helper.from_array((rng.random(width, dtype=np.float32) + 0.5), f"{p}.norm"))
                nodes += [helper.make_node("Mul", [x, x], [f"{p}.sq"]),
                          helper.make_node("ReduceMean", [f"{p}.sq", "axes"], [f"{p}.ms"], keepdims=1),
                          helper.make_node("Add", [f"{p}.ms", "eps"], [f"{p}.mse"]),
                          helper.make_node("Sqrt", [f"{p}.mse"], [f"{p}.rms"]),
                          helper.make_node("Div", [x, f"{p}.rms"], [f"{p}.xn"]),
                          helper.make_node("Mul", [f"{p}.xn", f"{p}.norm"], [f"{p}.h0"]),
                          helper.make_node("MatMul", [f"{p}.h0", weight(f"{p}.up", width, inner)], [f"{p}.h1"], name=f"{p}.up"),
                          helper.make_node("Relu", [f"{p}.h1"], [f"{p}.h2"]),
                          helper.make_node("MatMul", [f"{p}.h2", weight(f"{p}.down", inner, width)], [f"{p}.h3"], name=f"{p}.down"),
                          helper.make_node("Add", [x, f"{p}.h3"], [f"{p}.out"])]
                x = f"{p}.out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save_model(model, str(folder / "model.onnx"))
    return folder / "model.onnx", offset + sum(t.ByteSize() for t in inits if not t.external_data)


def status(key: str) -> int:
    """A /proc/self/status entry in bytes."""
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith(key)).split()[1]) * 1024


class AnonPeak:
    """Samples RssAnon of this process every 20 ms in a thread; `peak` is the largest seen."""

    def __init__(self) -> None:
        self.peak = status("RssAnon:")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def child(mode: str, model: str, output: str) -> None:
    """Run one measured job in this process and print {code, seconds, peak_rss, peak_anon} as JSON."""
    import onnx  # imported before the clock: import time is not the job's

    import onnxprune.verify
    from onnxprune.cli import main
    from onnxprune.load import load_model
    from onnxprune.save import save_model

    if mode == "onnx-ir":
        import onnx_ir  # noqa: F401  (installed with onnxscript; imported before the measurement starts)

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the RSS high-water mark: the imports are not the job's
    rss0, anon0 = status("VmRSS:"), status("RssAnon:")
    sampler = AnonPeak()
    start = time.perf_counter()
    code = 0
    if mode in ("prune", "prune-noverify"):
        if mode == "prune-noverify":  # neither the original's reference run nor the checks of the pruned model
            onnxprune.verify.reference_outputs = lambda *args, **kwargs: None
            onnxprune.verify.verify = lambda *args, **kwargs: onnxprune.verify.VerifyReport()
        code = main(["prune", model, "-o", output, "--ratio", "0.3", "--json"])
    elif mode == "onnx":
        proto = onnx.load(model)
        touched = sum(float(onnx.numpy_helper.to_array(t).sum()) for t in proto.graph.initializer)
        onnx.save(proto, output, save_as_external_data=True, location=Path(output).name + ".data")
    elif mode == "onnx-ir":
        import onnx_ir

        ir_model = onnx_ir.load(model)
        touched = sum(float(v.const_value.numpy().sum()) for v in ir_model.graph.initializers.values())
        onnx_ir.save(ir_model, output, external_data=Path(output).name + ".data")
    elif mode == "onnxprune-mapped":
        loaded = load_model(model, mapped=True)
        touched = sum(float(a.sum()) for a in loaded.arrays.values())
        # the in-memory writer: every tensor with its data (from the maps), then save_model
        from onnxprune.graph import with_data

        for tensor in loaded.model.graph.initializer:
            if tensor.name in loaded.arrays:
                tensor.CopyFrom(with_data(tensor, loaded.arrays[tensor.name]))
        save_model(loaded.model, output, external_data=True)
    elif mode == "onnxprune-streamed":
        loaded = load_model(model, mapped=True)
        touched = sum(float(a.sum()) for a in loaded.arrays.values())
        # what prune writes: each tensor from the map to a staged data file, one at a time, then renamed
        from onnxprune.staging import StagedOutput

        staged = StagedOutput(output)
        for tensor in loaded.model.graph.initializer:
            if tensor.name in loaded.arrays:
                tensor.CopyFrom(staged.put(tensor.name, loaded.arrays[tensor.name], like=tensor))
        staged.write_header(loaded.model)
        staged.commit()
    seconds = time.perf_counter() - start
    print(json.dumps({"code": code, "seconds": seconds, "peak_anon": sampler.stop() - anon0,
                      "peak_rss": status("VmHWM:") - rss0}))


def run_child(mode: str, model: Path, output: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(model), str(output)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{mode} exited with {result['code']}:\n{done.stderr[-3000:]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=8.0, help="weights to generate, in GB (default 8)")
    parser.add_argument("--width", type=int, default=4096, help="hidden width D (default 4096)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/onnxprune-large"))
    parser.add_argument("--modes", nargs="*", default=["prune", "prune-noverify", "onnxprune-streamed", "onnx-ir", "onnx"],
                        help="jobs to run (also: onnxprune-mapped, the in-memory writer)")
    parser.add_argument("--keep", action="store_true", help="leave the model and outputs in --dir")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    start = time.perf_counter()
    model, weight_bytes = build(args.dir, args.gb, args.width)
    print(f"built {model}: {weight_bytes / 1e9:.2f} GB of weights, width {args.width}, in {time.perf_counter() - start:.0f} s",
          flush=True)
    try:
        print("\n| job | seconds | peak RSS GB (x weights) | peak anonymous GB (x weights) |")
        print("|---|---|---|---|")
        for mode in args.modes:
            out = args.dir / "out" / f"{mode}.onnx"
            out.parent.mkdir(exist_ok=True)
            r = run_child(mode, model, out)
            print(f"| {mode} | {r['seconds']:.1f} | {r['peak_rss'] / 1e9:.2f} ({r['peak_rss'] / weight_bytes:.2f}x) | "
                  f"{r['peak_anon'] / 1e9:.2f} ({r['peak_anon'] / weight_bytes:.2f}x) |", flush=True)
            if mode.startswith("prune"):
                pruned = sum(p.stat().st_size for p in out.parent.glob(f"{mode}.onnx*"))
                print(f"|   (pruned files: {pruned / 1e9:.2f} GB = {pruned / weight_bytes:.2f}x) | | | |", flush=True)
            shutil.rmtree(out.parent)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
