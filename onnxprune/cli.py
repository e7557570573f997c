"""The `onnxprune` command: a thin layer over the Python API (onnxprune.api)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from . import __version__
from .api import PrunableModel, PruneResult, load, save
from .errors import InputError, OnnxPruneError
from .importance import CRITERIA
from .plan import Plan
from .save import check_output_path


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _print_inspect(info: dict) -> None:
    print(f"model: {info['model']} (opset {info['opset']})")
    print(f"parameters: {_fmt(info['params'])}   MACs per sample: {_fmt(info['macs'])}")
    print(f"prunable: {info['prunable_params']:.1%} of parameters, {info['prunable_macs']:.1%} of MACs")
    print(f"\n{'group':>5} {'channels':>8}  {'status':<9} layers / reason")
    for g in info["groups"]:
        status = "prunable" if g["prunable"] else "blocked"
        layers = ", ".join(g["layers"][:4]) + (f" (+{len(g['layers']) - 4})" if len(g["layers"]) > 4 else "")
        print(f"{g['id']:>5} {g['channels']:>8}  {status:<9} {layers}")
        if not g["prunable"]:
            print(f"{'':>26}{g['blocked']}")
    print(f"\n{'layer':<40} {'op':<14} {'channels':>8} {'params':>10} {'MACs':>10}")
    for layer in info["layers"]:
        print(f"{layer['node'][:40]:<40} {layer['op']:<14} {layer['channels'] or '':>8} {_fmt(layer['params']):>10} {_fmt(layer['macs']):>10}")


def _result_json(result: PruneResult, output: Path, input_path: Path) -> dict:
    return {"input": str(input_path), "output": str(output), "exact": result.exact,
            "params": [result.before["params"], result.after["params"]],
            "macs": [result.before["macs"], result.after["macs"]],
            "file_bytes": [_size(input_path), _size(output)],
            "max_rel_error": result.report.max_rel_error,
            "channels_removed": sum(g.removed for g in result.plan.groups),
            "layers": result.layers}


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _print_result(summary: dict) -> None:
    p, m, f = summary["params"], summary["macs"], summary["file_bytes"]
    print(f"{'layer':<40} {'op':<14} {'channels':>13} {'params':>19}")
    for layer in summary["layers"]:
        ch = layer["channels"]
        if ch[0] != ch[1] or layer["params"][0] != layer["params"][1]:
            print(f"{layer['node'][:40]:<40} {layer['op']:<14} {str(ch[0]) + ' -> ' + str(ch[1]):>13} "
                  f"{_fmt(layer['params'][0]) + ' -> ' + _fmt(layer['params'][1]):>19}")
    print(f"\nchannels removed: {summary['channels_removed']}")
    print(f"parameters: {_fmt(p[0])} -> {_fmt(p[1])} ({p[1] / max(p[0], 1):.1%})")
    print(f"MACs:       {_fmt(m[0])} -> {_fmt(m[1])} ({m[1] / max(m[0], 1):.1%})")
    print(f"file size:  {_fmt(f[0])}B -> {_fmt(f[1])}B")
    kind = "exact (only dead channels removed)" if summary["exact"] else "outputs differ as expected"
    print(f"verified: onnx.checker ok, onnxruntime runs, output shapes unchanged; max relative output change "
          f"{summary['max_rel_error']:.2e} ({kind})")
    print(f"wrote {summary['output']}")


def _allocation_args(args) -> dict:
    return {"ratio": args.ratio, "threshold": args.threshold, "target_macs": args.target_macs,
            "target_params": args.target_params, "global_ranking": args.global_ranking, "max_ratio": args.max_ratio,
            "round_to": args.round_to, "ignore": args.ignore or [], "protect_ends": args.protect_ends}


def _write_outputs(model: PrunableModel, result: PruneResult, args) -> dict:
    output = Path(args.output)
    save(result.model, output, external_data=True if model.loaded.had_external_data else None)
    if getattr(args, "plan_out", None):
        result.plan.write(args.plan_out)
    if getattr(args, "weights_out", None):
        result.write_weights(args.weights_out)
    return _result_json(result, output, model.path)


def cmd_inspect(args) -> int:
    model = load(args.model)
    info = model.inspect()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        _print_inspect(info)
    return 0


def cmd_prune(args) -> int:
    for path in (args.output, args.plan_out, args.weights_out):
        if path:
            check_output_path(Path(path), [Path(args.model)], args.overwrite)
    model = load(args.model)
    model.show_progress = not args.json and sys.stderr.isatty()
    options = _allocation_args(args)
    if all(options[k] is None for k in ("ratio", "threshold", "target_macs", "target_params")):
        raise InputError("options: say how much to prune: --ratio, --threshold, --target-macs or --target-params")
    plan = model.plan(args.criterion, args.data, args.aggregate, **options)
    result = model.apply(plan, args.data)
    summary = _write_outputs(model, result, args)
    print(json.dumps(summary, indent=1) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        _print_result(summary)
    return 0


def cmd_apply(args) -> int:
    for path in (args.output, args.weights_out):
        if path:
            check_output_path(Path(path), [Path(args.model)], args.overwrite)
    plan = Plan.read(args.plan)
    model = load(args.model)
    result = model.apply(plan, args.data, source=str(args.plan))
    summary = _write_outputs(model, result, args)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_result(summary)
    return 0


def _add_common_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model (atomically)")
    p.add_argument("--overwrite", action="store_true", help="allow -o to name the input model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--weights-out", help="also write the pruned weights (.npz keyed by the original initializer names) "
                                         "for loading back into the origin framework")
    p.add_argument("--data", help="calibration inputs (.npy, or .npz keyed by input name) used for verification "
                                  "and the activation criteria; default: random inputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxprune", description="Exact structured (channel) pruning of exported ONNX models.",
        epilog="Exit codes: 0 ok, 2 bad input (file, plan, data or option), 1 internal error. "
               "Run 'onnxprune COMMAND --help' for each command.")
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="show prunable channel groups, what blocks the others, params and MACs",
                       description="Build the channel-dependency graph and report every group of channels that must be "
                                   "pruned together, the layers in it, why a group is blocked, and parameters and "
                                   "multiply-accumulates per layer and in total.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("prune", help="remove channels and write a smaller, verified model",
                       description="Rank channels, choose how many to remove where, remove them and verify the result "
                                   "(onnx.checker, onnxruntime, output shapes). '--threshold 0' removes exactly the dead "
                                   "channels and leaves outputs unchanged.")
    p.add_argument("model", help="ONNX model file (never modified)")
    _add_common_output(p)
    how = p.add_argument_group("how much (choose one)")
    how.add_argument("--ratio", type=float, help="fraction of channels to remove in every group (uniform), or overall with --global")
    how.add_argument("--threshold", type=float, help="remove every channel whose importance is at most T (0: dead channels only)")
    how.add_argument("--target-macs", type=float, help="keep this fraction of MACs, e.g. 0.5 (met within 1%%)")
    how.add_argument("--target-params", type=float, help="keep this fraction of parameters (met within 1%%)")
    which = p.add_argument_group("which channels")
    which.add_argument("--criterion", default="l1", choices=list(CRITERIA) + ["activation", "apoz"],
                       help="importance criterion (default l1); activation and apoz need --data")
    which.add_argument("--aggregate", default="sum", choices=["sum", "mean", "max"], help="combine the scores of a group's layers (default sum)")
    which.add_argument("--global", dest="global_ranking", action="store_true", help="rank channels across all groups instead of per group")
    which.add_argument("--max-ratio", type=float, default=0.9, help="never remove more than this fraction of a group (default 0.9)")
    which.add_argument("--round-to", type=int, default=1, help="keep channel counts that are multiples of N (4 or 8 suit ncnn)")
    which.add_argument("--ignore", action="append", metavar="REGEX", help="leave groups alone whose initializer or node name matches (repeatable)")
    which.add_argument("--protect-ends", action="store_true", help="leave the first and last layers' channels alone")
    p.add_argument("--plan-out", help="also write the plan (JSON) that was applied")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("apply", help="apply a plan file (possibly edited by hand) to a model",
                       description="Apply a plan written by 'prune --plan-out' (or edited by hand) to the model it was made for.")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("plan", help="plan JSON file")
    _add_common_output(p)
    p.set_defaults(func=cmd_apply)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OnnxPruneError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted; nothing written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
