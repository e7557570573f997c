"""The `onnxprune` command: a thin layer over the Python API (onnxprune.api)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .units import si
from . import __version__
from .errors import InputError, OnnxPruneError
from .names import CRITERION_NAMES, DATA_CRITERION_NAMES
from .timings import Stage, Timings

if TYPE_CHECKING:
    from .api import PrunableModel, PruneResult, Pruning

CRITERIA = CRITERION_NAMES + DATA_CRITERION_NAMES

# The API (onnx, networkx, numpy; onnxruntime once a command verifies) is imported by the commands
# that need it, not by `onnxprune --help` or argument errors: these three stand in for it.


def load(path, input_shapes=None, mapped: bool = False) -> "PrunableModel":
    from .api import load as api_load

    return api_load(path, input_shapes, mapped=mapped)


def parse_input_shapes(values):
    from .inputs import parse_input_shapes as parse

    return parse(values)


def check_output_paths(source, outputs, overwrite: bool) -> None:
    from .save import check_output_paths as check

    check(source, outputs, overwrite)


def _print_inspect(info: dict) -> None:
    print(f"model: {info['model']} (opset {info['opset']})")
    shapes = info.get("cost_shapes")
    at = ("at " + " ".join(f"{k}:{'x'.join(map(str, d))}" for k, d in shapes.items())) if shapes else "a dynamic batch counted as 1"
    print(f"parameters: {si(info['params'])}   MACs: {si(info['macs'])} (one run; {at})")
    print(f"prunable: {info['prunable_params']:.1%} of parameters, {info['prunable_macs']:.1%} of MACs")
    if info["control_flow"]:
        names = ", ".join(info["control_flow"][:3]) + (" ..." if len(info["control_flow"]) > 3 else "")
        print(f"control flow: {len(info['control_flow'])} node(s) hold subgraphs ({names}); only the layers outside "
              "them are analysed and pruned" + ("; nothing outside is prunable" if not any(g["prunable"] for g in info["groups"]) else ""))
    print(f"\n{'group':>5} {'channels':>8}  {'status':<9} layers / reason")
    for g in info["groups"]:
        status = "prunable" if g["prunable"] else "blocked"
        names = g["origins"]
        layers = ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")
        print(f"{g['id']:>5} {g['channels']:>8}  {status:<9} {layers}")
        if not g["prunable"]:
            print(f"{'':>26}{g['blocked']}")
    _print_blocks(info)
    print(f"\n{'layer':<40} {'op':<14} {'channels':>8} {'params':>10} {'MACs':>10}  onnx node")
    for layer in info["layers"]:
        print(f"{_layer(layer):<40} {layer['op']:<14} {layer['channels'] or '':>8} {si(layer['params']):>10} "
              f"{si(layer['macs']):>10}  {layer['node']}")


def _print_blocks(info: dict) -> None:
    """The residual blocks `prune --drop-blocks` can remove, and the ones it cannot (why)."""
    if not info["blocks"] and not info["blocks_refused"]:
        return
    print(f"\n{'block':>5} {'MACs':>10}  {'status':<9} layer / branch / reason")
    for b in info["blocks"]:
        print(f"{b['id']:>5} {si(b['macs']):>10}  {'removable':<9} {b['origin'] or b['node']} / {b['module'] or '-'}")
    for r in info["blocks_refused"]:
        print(f"{'-':>5} {'':>10}  {'kept':<9} {r['origin'] or r['node']} ({r['node']})")
        print(f"{'':>29}{r['reason']}")


def _layer(layer: dict, width: int = 40) -> str:
    """A table's layer column: the origin-framework name, else the ONNX node name (cut to width)."""
    from .origin import display_name

    return display_name(layer["node"], layer.get("origin"))[:width]


def _result_json(result: "PruneResult", output: Path, input_path: Path) -> dict:
    from .origin import scope_path

    return {"input": str(input_path), "output": str(output), "exact": result.exact,
            "params": [result.before.params, result.after.params],
            "macs": [result.before.macs, result.after.macs],
            "file_bytes": [_size(input_path), _size(output)],
            "max_rel_error": result.report.max_rel_error,
            "quality": result.quality.to_json() if result.quality else None,
            "channels_removed": sum(g.removed for g in result.plan.groups),
            "layers": [{"node": c.node, "origin": c.origin, "op": c.op, "channels": list(c.channels), "params": list(c.params),
                        "macs": list(c.macs)} for c in result.layers],
            "recovery": result.recovery.to_json() if result.recovery else None,
            "measured_latency": result.plan.options.get("measured_latency"),
            "latency_engine": result.plan.options.get("latency_engine", "onnxruntime"),
            "blocks_dropped": [{"node": b.add, "origin": b.origin, "module": scope_path(b.module), "macs": b.macs, "influence": b.influence}
                               for b in result.plan.blocks]}


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _print_result(summary: dict) -> None:
    p, m, f = summary["params"], summary["macs"], summary["file_bytes"]
    print(f"{'layer':<40} {'op':<14} {'channels':>13} {'params':>19}  onnx node")
    for layer in summary["layers"]:
        ch = layer["channels"]
        if ch[0] != ch[1] or layer["params"][0] != layer["params"][1]:
            channels = "-" if ch[0] is None and ch[1] is None else f"{ch[0]} -> {ch[1]}"
            print(f"{_layer(layer):<40} {layer['op']:<14} {channels:>13} "
                  f"{si(layer['params'][0]) + ' -> ' + si(layer['params'][1]):>19}  {layer['node']}")
    for block in summary.get("blocks_dropped", []):
        print(f"dropped block {block['origin'] or block['node']} (branch {block['module'] or '-'}, {si(block['macs'])} MACs, "
              f"influence {block['influence']:.4g})")
    print(f"\nchannels removed: {summary['channels_removed']}")
    print(f"parameters: {si(p[0])} -> {si(p[1])} ({p[1] / max(p[0], 1):.1%})")
    print(f"MACs:       {si(m[0])} -> {si(m[1])} ({m[1] / max(m[0], 1):.1%})")
    print(f"file size:  {si(f[0])}B -> {si(f[1])}B")
    if summary.get("measured_latency") is not None:
        print(f"latency:    {summary['measured_latency']:.1%} of the original's ({summary['latency_engine']} on this machine)")
    if summary.get("blocks_dropped"):
        kind = "outputs differ as expected: residual blocks removed"
    elif summary["channels_removed"] == 0:
        kind = "nothing removed: the plan keeps every channel, so the output is a verified copy"
    else:
        kind = "exact (only dead channels removed)" if summary["exact"] else "outputs differ as expected"
    print(f"verified: onnx.checker ok, onnxruntime runs, output shapes unchanged; max relative output change "
          f"{summary['max_rel_error']:.2e} ({kind})")
    if summary.get("recovery"):  # the same measure, before and after reconstruction
        print(_format_recovery(summary["recovery"]))
    elif summary["quality"]:
        from .quality import Quality

        print(f"quality against the original {Quality(**summary['quality']).describe('original', 'pruned')}")
    print(f"wrote {summary['output']}")


def _format_recovery(rec: dict) -> str:
    """Agreement with the original on the --data samples (onnxprune.quality), plain and reconstructed."""
    from .quality import Quality

    def line(label: str, f: dict) -> str:
        return f"  {label + ':':<14} {Quality(**f).describe('original', label)}"
    lines = ["agreement with the original:", line("pruned", rec["plain"])]
    fit = rec["reconstruction"]
    if fit is not None:
        fitted = sum(layer["fitted"] for layer in fit["layers"])
        if rec["reconstructed"] is not None:
            lines.append(line("reconstructed", rec["reconstructed"]))
        else:
            lines.append("  reconstructed: agreed less with the original than plain pruning; kept the plainly pruned model")
        lines.append(f"  reconstruction: {fitted} of {len(fit['layers'])} layers re-fitted in {fit['seconds']:.1f} s"
                     + (f"; not re-fitted: {'; '.join(fit['skipped'])}" if fit["skipped"] else ""))
    return "\n".join(lines)


def _allocation_args(args) -> dict:
    return {"ratio": args.ratio, "threshold": args.threshold, "target_macs": args.target_macs,
            "target_params": args.target_params, "global_ranking": args.global_ranking, "max_ratio": args.max_ratio,
            "round_to": args.round_to, "ignore": args.ignore or [], "protect_ends": args.protect_ends,
            "normalize": args.normalize, "target_latency": args.target_latency, "latency_batch": args.latency_batch,
            "latency_threads": args.latency_threads, "latency_engine": args.latency_engine,
            "drop_blocks": getattr(args, "drop_blocks", None),
            "inexact_layernorm": getattr(args, "inexact_layernorm", False)}


def _write_outputs(input_path: Path, result: "PruneResult", args, timings: Timings | None = None) -> dict:
    output = Path(args.output)
    with (timings or Timings()).stage(Stage.SAVE):
        result.save(output)
    if getattr(args, "plan_out", None):
        result.plan.write(args.plan_out)
    if getattr(args, "weights_out", None):
        result.write_weights(args.weights_out)
    return _result_json(result, output, input_path)


def _print_timings(timings: Timings, args) -> None:
    """`--timings`: seconds per stage on stderr (stdout stays the summary, or JSON)."""
    if args.timings:
        print(timings.format(), file=sys.stderr)


def _pruned(args) -> "Pruning":
    """Load, plan (or read the plan) and cut.  The loaded original goes out of scope when this
    returns, so verifying the Pruning afterwards never holds the original's weights, the pruned
    model and an onnxruntime session at once (PrunableModel.surgery)."""
    # External data is mapped, not read; with external data the pruned model is written as it
    # goes, to staged files beside the output that saving renames into place (api.surgery)
    model = load(args.model, parse_input_shapes(args.input_shape), mapped=True)
    if getattr(args, "plan", None):
        from .plan import Plan

        plan = Plan.read(args.plan)
        model.check_runs(args.data, watch=False)  # the original must run on the verification inputs before any work
        return model.surgery(plan, args.data, source=str(args.plan), reconstruct=args.reconstruct, output=args.output)
    model.show_progress = not args.json and sys.stderr.isatty()
    options = _allocation_args(args)
    if args.sensitivity or args.max_loss is not None:
        options.update(sensitivity=args.sensitivity, max_loss=args.max_loss)
    elif args.plot:
        raise InputError("options: --plot needs --sensitivity")
    elif all(options[k] is None for k in ("ratio", "threshold", "target_macs", "target_params", "target_latency", "drop_blocks")):
        raise InputError("options: say how much to prune: --ratio, --threshold, --target-macs, --target-params, "
                         "--target-latency or --drop-blocks")
    if args.plot:
        from .sensitivity import plotting

        plotting()  # before any work, not after it
    model.check_runs(args.data)  # the original must run on the verification inputs before any work
    plan = model.plan(args.criterion, args.data, args.aggregate, **options)
    for warning in plan.warnings:
        print(f"onnxprune: warning: {warning}", file=sys.stderr)
    if args.plot:
        from .sensitivity import Sensitivity, plot

        plot(Sensitivity.read(Path(args.sensitivity)), Path(args.plot),
             {int(g): r for g, r in plan.options["sensitivity_ratios"].items()})
    return model.surgery(plan, args.data, reconstruct=args.reconstruct, output=args.output)


def cmd_inspect(args) -> int:
    shapes = parse_input_shapes(args.input_shape)
    model = load(args.model, shapes)
    info = model.inspect()
    if args.scores:
        stats = model.score_stats(args.criterion, args.data, args.aggregate, args.normalize)
        info["scores"] = {"criterion": args.criterion, "aggregate": args.aggregate, "normalize": args.normalize,
                          "groups": [asdict(s) for s in stats]}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    _print_inspect(info)
    if args.scores:
        _print_scores(info)
    return 0


def _score(value: float) -> str:
    """A score for a table; a live channel's floor (the smallest positive float, see
    importance.importance) reads as '>0', not as 2.23e-308."""
    return ">0" if 0 < value < 1e-300 else f"{value:.3g}"


def _print_scores(info: dict) -> None:
    scores = info["scores"]
    origins = {g["id"]: g["origins"] for g in info["groups"]}
    print(f"\nimportance ({scores['criterion']}, aggregate {scores['aggregate']}, normalize {scores['normalize']}), "
          f"as --threshold compares it; zeros are dead channels (what --threshold 0 removes):")
    print(f"{'group':>5} {'ch':>5} {'min':>9} {'25%':>9} {'median':>9} {'75%':>9} {'max':>9} {'zeros':>5}  layers")
    for s in scores["groups"]:
        values = " ".join(f"{_score(s[k]):>9}" for k in ("min", "q25", "median", "q75", "max"))
        print(f"{s['group']:>5} {s['channels']:>5} {values} {s['zeros']:>5}  {', '.join(origins[s['group']][:3])}")


def cmd_prune(args) -> int:
    check_output_paths(args.model, (args.output, args.plan_out, args.weights_out), args.overwrite)
    pruning = _pruned(args)
    gc.collect()  # the original's index and its value cache refer to each other: free its weights now
    try:
        result = pruning.verify()
        if args.simplify:
            _simplify(result, pruning.feeds)
        summary = _write_outputs(Path(args.model), result, args, pruning.timings)
    finally:
        pruning.discard()  # staged files that were not saved (an error): nothing is left behind
    plan = result.plan
    _print_timings(pruning.timings, args)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    _print_result(summary)
    if args.round_to == 1 and args.threshold is None and any(len(g.keep) % 8 for g in plan.groups if g.removed):
        print("tip: channel counts that are not multiples of 8 (4 on ARM) can make the model slower, not faster; "
              "try --round-to 8 (README, Benchmarks)")
    return 0


def _simplify(result: "PruneResult", feeds) -> None:
    """Replace the pruned model by its onnxslim-simplified form, checked on the verification inputs."""
    from .deploy.simplify import simplify_checked

    result.materialize()  # onnxslim edits a model held in memory
    result.model = simplify_checked(result.model, feeds)


def cmd_apply(args) -> int:
    check_output_paths(args.model, (args.output, args.weights_out), args.overwrite)
    pruning = _pruned(args)
    gc.collect()  # the original's index and its value cache refer to each other: free its weights now
    try:
        result = pruning.verify()
        summary = _write_outputs(Path(args.model), result, args, pruning.timings)
    finally:
        pruning.discard()  # staged files that were not saved (an error): nothing is left behind
    _print_timings(pruning.timings, args)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_result(summary)
    return 0


def cmd_finetune(args) -> int:
    from .finetune import FinetuneOptions, finetune
    from .quality import QUALITY_BATCH, measure_all
    from .runtime import batches
    from .save import save_model

    check_output_paths(args.model, (args.output,), args.overwrite)
    student, teacher = load(args.model), load(args.teacher)
    feeds = student.calibration(args.data)
    options = FinetuneOptions(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, minutes=args.minutes,
                              features=_feature_index(teacher, args.features, args.plan), holdout=args.holdout)
    if min(options.epochs, options.batch_size) < 1 or options.lr <= 0 or not 0 <= options.holdout < 1:
        raise InputError("options: --epochs and --batch-size must be at least 1, --lr positive, --holdout in [0, 1)")
    result = finetune(student.model, teacher.model, feeds, options, progress=not args.json and sys.stderr.isatty())
    before, after = measure_all(teacher.model, [student.model, result.model], list(batches(feeds, QUALITY_BATCH)))
    save_model(result.model, args.output, True if student.loaded.had_external_data else None)
    summary = {"input": str(args.model), "teacher": str(args.teacher), "output": str(args.output), "steps": result.steps,
               "seconds": result.seconds, "first_loss": result.first_loss, "epoch_losses": result.losses,
               "trained": result.trained, "holdout_losses": result.holdout_losses, "kept_epoch": result.kept_epoch,
               "before": before.to_json(), "after": after.to_json()}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"distilled {len(result.trained)} weight tensors in {result.steps} steps ({result.seconds:.0f} s); "
          f"loss {result.first_loss:.4g} -> {result.losses[-1]:.4g} (epoch means: {', '.join(f'{v:.3g}' for v in result.losses)})")
    if result.kept_epoch == 0:
        print(f"no epoch lowered the loss on the held-out samples ({result.holdout_losses[0]:.4g}): the model is written unchanged")
    elif result.kept_epoch is not None:
        print(f"kept epoch {result.kept_epoch} of {len(result.losses)}: held-out loss "
              f"{result.holdout_losses[0]:.4g} -> {result.holdout_losses[result.kept_epoch]:.4g}")
    for label, f in (("before", before), ("after", after)):
        print(f"{label}: against the teacher {f.describe()}")
    print(f"wrote {args.output}")
    return 0


def _feature_index(teacher, features: str | None, plan_path: str | None) -> dict:
    """--features NAME,... (and --plan, the plan that pruned the teacher): each tensor's kept channels."""
    from .finetune import kept_channels
    from .plan import Plan, resolve

    names = [n for n in (features or "").split(",") if n]
    if plan_path and not names:
        raise InputError("options: --plan needs --features")
    kept = kept_channels(teacher.depgraph, resolve(Plan.read(plan_path), teacher.depgraph, plan_path)) if plan_path else {}
    return {n: kept.get(n, {}) for n in names}


def cmd_iterate(args) -> int:
    from .finetune import FinetuneOptions
    from .iterative import IterativeOptions, iterate
    from .quality import labels_for
    from .save import save_model

    check_output_paths(args.model, (args.output,), args.overwrite)
    model = load(args.model, parse_input_shapes(args.input_shape))
    feeds = model.calibration(args.data)
    distill = FinetuneOptions(epochs=args.distill_epochs, lr=args.lr, batch_size=args.batch_size) if args.distill_epochs else None
    options = IterativeOptions(args.target_macs, args.steps, args.schedule, args.criterion, args.reconstruct, distill,
                               [n for n in (args.features or "").split(",") if n],
                               {"round_to": args.round_to, "max_ratio": args.max_ratio, "ignore": args.ignore or [],
                                "protect_ends": args.protect_ends})
    result = iterate(model, feeds, options, labels_for(args.data, len(next(iter(feeds.values())))),
                             progress=not args.json and sys.stderr.isatty())
    save_model(result.model, args.output, True if model.loaded.had_external_data else None)
    summary = {"input": str(args.model), "output": str(args.output), "steps": [vars(r) for r in result.steps]}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for r in result.steps:
        top1 = f", top-1 agreement {r.top1_agreement:.2%}" if r.top1_agreement is not None else ""
        accuracy = f"; accuracy {r.accuracy:.2%}" if r.accuracy is not None else ""
        print(f"step {r.step}/{options.steps}: {r.macs:.1%} of the MACs (aimed at {r.target_macs:.1%}); against the "
              f"original on --data: relative output error {r.rel_error:.3g}{top1}{accuracy} ({r.seconds:.0f} s)")
    print(f"wrote {args.output}")
    return 0


def cmd_sensitivity(args) -> int:
    from .data import load_labels
    from .sensitivity import DEFAULT_RATIOS, analyse, metric_from_spec, plot, plotting

    check_output_paths(args.model, (args.output, args.plot), False)
    metric = metric_from_spec(args.metric)
    if args.plot:
        plotting()
    model = load(args.model)
    feeds = model.calibration(args.data)
    from .runtime import sample_count

    n_samples = sample_count(feeds)
    labels = load_labels(args.labels, args.data, n_samples) if args.labels or args.metric == "accuracy" else None
    try:
        ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else list(DEFAULT_RATIOS)
    except ValueError:
        raise InputError(f"options: --ratios '{args.ratios}' is not a comma-separated list of numbers") from None
    sens = analyse(model, feeds, labels, metric, ratios, args.criterion, args.workers, args.backend,
                   args.batch, Path(args.output), progress=sys.stderr.isatty() and not args.json, reconstruct=args.reconstruct)
    if args.plot:
        plot(sens, Path(args.plot))
    if args.json:
        print(sens.to_json(), end="")
        return 0
    baseline = f" (baseline accuracy {sens.baseline:.2%})" if args.metric == "accuracy" else ""
    print(f"loss ({args.metric}{baseline}) when only this group loses a fraction of its channels:")
    print(f"{'group':>5} {'ch':>5}  " + " ".join(f"{r:>6.0%}" for r in sens.ratios) + "  layers")
    for gid in sorted(sens.groups):
        g = sens.groups[gid]
        row = " ".join(f"{g.losses.get(r, float('nan')):>6.3f}" for r in sens.ratios)
        print(f"{gid:>5} {g.channels:>5}  {row}  {', '.join((g.origins or g.layers)[:3])}")
    print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _storage(summary: dict) -> str:
    """How the weights were stored: with --format sparse, only weights sparse enough for COO with
    int64 indices to be smaller (above 2/3 zeros for float32) become sparse initializers."""
    if summary["format"] == "dense":
        return "dense with exact zeros"
    stored, total = len(summary["stored_sparse"]), len(summary["layers"])
    if stored == 0:
        return (f"stored dense: none of the {total} sparsified weights is sparse enough for the sparse format to be "
                "smaller (COO with int64 indices needs more than 2/3 zeros for float32)")
    dense = f"; {total - stored} stay dense (too few zeros for COO to be smaller)" if stored < total else ""
    return f"sparse format: {stored} of {total} sparsified weights stored as sparse initializers{dense}"


def cmd_sparsify(args) -> int:
    from .sparsity import SparsityOptions, format_summary, sparsify

    options = {"sparsity": args.sparsity, "quality": args.quality, "global_ranking": args.global_ranking,
               "ignore": args.ignore or [], "include_depthwise": args.include_depthwise, "protect_ends": args.protect_ends}
    SparsityOptions(**options).validate()
    check_output_paths(args.model, (args.output, args.masks_out), args.overwrite)
    model = load(args.model, parse_input_shapes(args.input_shape))
    result = sparsify(model, args.data, **options)
    external = True if model.loaded.had_external_data and args.format == "dense" else None  # sparse weights stay inline
    output = result.save(args.output, args.format, external_data=external)
    if args.masks_out:
        result.write_masks(args.masks_out)
    summary = {"input": str(model.path), "output": str(output), "format": args.format, "masks_out": args.masks_out,
               "file_bytes": [_size(model.path), _size(output)], **result.summary()}
    if args.format == "sparse":
        summary["stored_sparse"] = result.stored_sparse()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(format_summary(summary))
    print(f"\nfile size:  {si(summary['file_bytes'][0])}B -> {si(summary['file_bytes'][1])}B ({_storage(summary)})")
    identical = "; sparse storage gives outputs identical to dense with zeros" if summary.get("stored_sparse") else ""
    print(f"verified: onnx.checker ok, onnxruntime runs, output shapes unchanged; max relative output change "
          f"{summary['max_rel_error']:.2e}{identical}")
    print(f"wrote {output}" + (f" and {args.masks_out}" if args.masks_out else ""))
    return 0


def cmd_report(args) -> int:
    from .report import build, check_png_support, render_html, write_pngs
    from .save import write_atomic

    check_output_paths(args.model, (args.output,), False)
    if args.png_dir:
        check_png_support()
    report = build(args.model, args.pruned, args.plan, args.sensitivity, args.data, args.runs)
    write_atomic(Path(args.output), render_html(report).encode())
    pngs = write_pngs(report, Path(args.png_dir)) if args.png_dir else []
    print(f"wrote {args.output}" + (f" and {', '.join(str(p) for p in pngs)}" if pngs else ""))
    return 0


def cmd_export_ncnn(args) -> int:
    from .deploy.ncnn import export_ncnn, parse_shape

    shapes = [parse_shape(s) for s in args.inputshape] if args.inputshape else None
    report = export_ncnn(args.model, args.outdir, shapes, args.fp16)
    summary = {"param": str(report.files.param), "bin": str(report.files.bin), "inputshape": report.shapes,
               "fp16": report.fp16, "max_rel_error": report.max_rel_error}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"ncnn vs onnxruntime ({'fp16' if args.fp16 else 'fp32'}, input {report.shapes}): "
              f"max relative error {report.max_rel_error:.2e}")
        print(f"wrote {report.files.param} and {report.files.bin}")
    return 0


def cmd_quantize(args) -> int:
    from .deploy.bench import bench, format_table
    from .deploy.quantize import quantize

    check_output_paths(args.model, (args.output,), args.overwrite)
    keep = [k.strip() for k in args.keep_float.split(",") if k.strip()] if args.keep_float else []
    report = quantize(args.model, args.output, args.data, args.per_channel, args.format, keep)
    timings = bench([args.model, args.output], (1,), threads=1, runs=args.runs)
    if args.json:
        print(json.dumps({**report.to_json(), "latency": [t.to_json() for t in timings]}, indent=1))
        return 0
    f = report.fidelity
    print(f"quantized ({args.format}, {'per-channel' if args.per_channel else 'per-tensor'} int8 weights, uint8 activations); "
          f"kept in float: {', '.join(report.kept_float) or 'none'}")
    print(f"fidelity to the float model {f.describe('float', 'int8')}")
    print(format_table(timings))
    print(f"wrote {report.output}")
    return 0


def cmd_bench(args) -> int:
    from .deploy.bench import bench, format_table

    try:
        batches = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise InputError(f"options: --batch '{args.batch}' is not a comma-separated list of integers") from None
    timings = bench(args.models, batches, args.threads, args.runs, args.ncnn, shapes=parse_input_shapes(args.input_shape))
    print(json.dumps([t.to_json() for t in timings], indent=1) if args.json else format_table(timings))
    return 0


def _add_common_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model (atomically)")
    p.add_argument("--overwrite", action="store_true", help="allow -o to name the input model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--weights-out", help="also write the pruned weights (.npz keyed by the original initializer names) "
                                         "for loading back into the origin framework")
    p.add_argument("--data", help="calibration inputs (.npy, or .npz keyed by input name) used for verification, "
                                  "the activation criteria and the report of agreement with the original (accuracy "
                                  "too when the .npz has 'labels'); more samples than a fixed batch are fed in chunks "
                                  "of it; default: random inputs of sizes the original model runs at")
    p.add_argument("--reconstruct", action="store_true",
                   help="with --data: re-fit each layer that reads pruned channels by least squares so that its "
                        "output matches the original's on the data (sequentially; removed channels' mean goes into "
                        "the bias); no labels, no training code")
    p.add_argument("--timings", action="store_true", help="print the seconds each stage took (load, depgraph, importance, "
                                                           "allocation, surgery, verification, save) to stderr")
    _add_input_shape(p)


def _add_channel_limits(group) -> None:
    """The allocation limits prune and iterate share (AllocationOptions' max_ratio, round_to,
    ignore, protect_ends)."""
    group.add_argument("--max-ratio", type=float, default=0.9, help="never remove more than this fraction of a group (default 0.9)")
    group.add_argument("--round-to", type=int, default=1, help="keep channel counts that are multiples of N (4 or 8 suit ncnn)")
    group.add_argument("--ignore", action="append", metavar="REGEX", help="leave groups alone whose initializer or node name matches (repeatable)")
    group.add_argument("--protect-ends", action="store_true", help="leave the first and last layers' channels alone")


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x640x640",
                   help="size of a dynamic input for the random verification inputs (repeatable, one per input; "
                        "ignored with --data); default: the model's size hints, then common sizes, the first the "
                        "original model runs at")


def _add_global_ranking(group, help_text: str) -> None:
    """`--global-ranking` (API and plan: global_ranking); `--global`, its old spelling, still works."""
    group.add_argument("--global-ranking", dest="global_ranking", action="store_true", help=help_text)
    group.add_argument("--global", dest="global_ranking", action="store_true", help=argparse.SUPPRESS)


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
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x640x640",
                   help="size of a dynamic input (repeatable): costs are counted at it")
    scores = p.add_argument_group("importance scores (to choose a --threshold)")
    scores.add_argument("--scores", action="store_true", help="also show each prunable group's score distribution (min, "
                        "quartiles, max, dead channels) as prune --threshold compares it")
    scores.add_argument("--criterion", default="l1", choices=CRITERIA,
                        help="importance criterion (default l1, as prune); activation, apoz, wanda and thinet need --data")
    scores.add_argument("--aggregate", default="sum", choices=["sum", "mean", "max"], help="as prune (default sum)")
    scores.add_argument("--normalize", default="mean", choices=["mean", "max", "none"],
                        help="as prune (default mean: scores divided by their group's mean, so T = 0.5 means half the mean)")
    scores.add_argument("--data", help="calibration inputs for --criterion activation, apoz, wanda or thinet")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("prune", help="remove channels and write a smaller, verified model",
                       description="Rank channels, choose how many to remove where, remove them and verify the result "
                                   "(onnx.checker, onnxruntime, output shapes). '--threshold 0' removes exactly the dead "
                                   "channels and leaves outputs unchanged.")
    p.add_argument("model", help="ONNX model file (never modified)")
    _add_common_output(p)
    how = p.add_argument_group("how much (choose one)")
    how.add_argument("--ratio", type=float, help="fraction of channels to remove in every group (uniform), or overall with --global-ranking")
    how.add_argument("--threshold", type=float, help="remove every channel whose importance is at most T (0: dead channels only)")
    how.add_argument("--target-macs", type=float, help="keep this fraction of MACs, e.g. 0.5 (met within 1%%)")
    how.add_argument("--target-params", type=float, help="keep this fraction of parameters (met within 1%%)")
    how.add_argument("--target-latency", type=float, metavar="F",
                     help="keep this fraction of the original's latency, measured in onnxruntime on this machine "
                          "(per-layer latency table, cached; then the result is timed and refined; see README)")
    how.add_argument("--latency-batch", type=int, default=1, help="with --target-latency: batch size to time (default 1)")
    how.add_argument("--latency-threads", type=int, default=0,
                     help="with --target-latency: threads to time with (default 0: all cores)")
    how.add_argument("--latency-engine", "--engine", choices=("onnxruntime", "ncnn"), default="onnxruntime",
                     help="with --target-latency: the engine to measure latency in: onnxruntime (default) or ncnn "
                          "(the model converted by pnnx, fp32; needs the pnnx and ncnn packages)")
    how.add_argument("--drop-blocks", type=int, metavar="N",
                     help="remove the N residual blocks (x + f(x) -> x: a transformer's attention or MLP, a ResNet block "
                          "with an identity shortcut) that change their input least on --data (ShortGPT's block "
                          "influence); combines with the options above, which then prune channels of what is left")
    which = p.add_argument_group("which channels")
    which.add_argument("--criterion", choices=CRITERIA,
                       help="importance criterion; default: activation with --data, else scaled (filter norm times the "
                            "per-channel scale after it, with its bias, times the consumers' weight norm); activation, "
                            "apoz, wanda (|W| x ||X||, Wanda per channel or head) and thinet (ThiNet: channels removed "
                            "greedily so that the consuming layers' outputs change least on the data) need --data")
    which.add_argument("--aggregate", default="sum", choices=["sum", "mean", "max"], help="combine the scores of a group's layers (default sum)")
    _add_global_ranking(which, "rank channels across all groups instead of per group")
    which.add_argument("--normalize", default="mean", choices=["mean", "max", "none"],
                       help="how scores are scaled per group before a global ranking (default mean; none: a layer with "
                            "small weights overall loses more)")
    _add_channel_limits(which)
    which.add_argument("--inexact-layernorm", action="store_true",
                       help="slice LayerNorms on pruned residual channels and let their mean and variance run over the "
                            "pruned width (Torch-Pruning's behaviour, a plain LayerNormalization node): outputs change, "
                            "even under --threshold 0.  Default: exact, the statistics keep dividing by the original "
                            "width (README, Transformers)")
    sens = p.add_argument_group("from a sensitivity analysis (see 'onnxprune sensitivity')")
    sens.add_argument("--sensitivity", metavar="SENS_JSON", help="choose per-group ratios from this analysis: the least "
                      "predicted loss that meets --target-macs/--target-params, or the smallest model within --max-loss")
    sens.add_argument("--max-loss", type=float, help="with --sensitivity: largest loss tolerated per group (metric units)")
    sens.add_argument("--plot", metavar="PNG", help="with --sensitivity: draw the curves with the chosen ratios marked")
    p.add_argument("--plan-out", help="also write the plan (JSON) that was applied")
    p.add_argument("--simplify", action="store_true", help="run onnxslim on the pruned model (needs the optional package "
                                                           "onnxslim); outputs are checked to stay within 1e-4")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="distil a pruned model toward the original on unlabeled data (needs torch)",
                       description="Knowledge distillation without the training code: the pruned ONNX graph runs in PyTorch "
                                   "(onnxprune's own small executor), the original (--teacher) in onnxruntime; the Conv, Gemm "
                                   "and MatMul weights and biases are trained to match the teacher's outputs on --data (Adam, "
                                   "cosine learning-rate schedule) and written back into the same graph by name: nothing else "
                                   "changes. Needs the optional extra: pip install 'onnxprune[torch]'.")
    p.add_argument("model", help="pruned ONNX model (never modified)")
    p.add_argument("--teacher", required=True, help="the original ONNX model")
    p.add_argument("--data", required=True, help="unlabeled inputs (.npy, or .npz keyed by input name)")
    p.add_argument("-o", "--output", required=True, help="where to write the distilled model (atomically)")
    p.add_argument("--epochs", type=int, default=10, help="passes over --data (default 10)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the cosine schedule (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    p.add_argument("--minutes", type=float, help="stop after this much wall time (the schedule then spans it)")
    p.add_argument("--holdout", type=float, default=0.125,
                   help="fraction of --data not trained on; the epoch with the lowest loss on it is written, or the "
                        "model unchanged if none beat it (default 0.125; 0: the last epoch, trained on all of --data)")
    p.add_argument("--features", metavar="NAME,...", help="also match these intermediate tensors (names in both graphs) "
                                                         "to the teacher's, each one's normalised squared error added to the loss")
    p.add_argument("--plan", help="the plan that pruned the teacher into the model (prune --plan-out): needed when a "
                                  "--features tensor lost channels, to compare it with the teacher's kept channels")
    p.add_argument("--overwrite", action="store_true", help="allow -o to name the input model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("iterate", help="prune in K steps, recovering on unlabeled data after each (reconstruct and/or distil)",
                       description="The iterative prune-recover loop on the ONNX model alone: each step prunes a little more "
                                   "(ranked and allocated on the current pruned model), then re-fits the layers on --data "
                                   "(--reconstruct, the default) and/or distils toward the original (--distill-epochs N, needs "
                                   "torch), until --target-macs. After step k of K the model keeps 1 - s(k) of the original's "
                                   "MACs, s the --schedule of removed fractions. Every step is verified like prune's output.")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("--target-macs", type=float, required=True, help="keep this fraction of MACs at the end, e.g. 0.5")
    p.add_argument("--steps", type=int, default=4, help="prune-recover steps (default 4)")
    p.add_argument("--schedule", default="linear", choices=["linear", "geometric"],
                   help="linear: equal cuts of the original's MACs; geometric: each step removes the same fraction of "
                        "what is left (default linear)")
    p.add_argument("--data", required=True, help="calibration inputs (.npy, or .npz keyed by input name; 'labels' in the "
                                                 ".npz add accuracy to the report)")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model (atomically)")
    p.add_argument("--criterion", choices=CRITERIA, help="which channels go first (default: activation, on --data)")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=True,
                   help="re-fit the layers after each step's prune (default on; --no-reconstruct turns it off)")
    p.add_argument("--distill-epochs", type=int, default=0, help="epochs of distillation toward the original after each "
                                                                  "step (default 0: none; needs torch)")
    p.add_argument("--lr", type=float, default=1e-4, help="with --distill-epochs: peak learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=16, help="with --distill-epochs: samples per step (default 16)")
    p.add_argument("--features", metavar="NAME,...", help="with --distill-epochs: also match these intermediate tensors "
                                                         "to the original's (through the channels kept over all steps)")
    _add_channel_limits(p)
    _add_input_shape(p)
    p.add_argument("--overwrite", action="store_true", help="allow -o to name the input model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_iterate)

    p = sub.add_parser("sensitivity", help="measure how much each group suffers when pruned alone",
                       description="For every group and ratio, prune that group alone and measure a metric on your data: "
                                   "fidelity to the original outputs without labels, accuracy with labels. One onnxruntime "
                                   "session evaluates all candidates (channel masks as extra inputs); results are saved after "
                                   "each candidate, and running the same command again resumes.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--data", required=True, help="calibration inputs (.npy, or .npz keyed by input name)")
    p.add_argument("--labels", help="labels (.npy) for --metric accuracy; default: a 'labels' array in the --data .npz")
    p.add_argument("--metric", default="top1-agreement",
                   help="loss to measure: accuracy, top1-agreement (default: fraction of changed top-1 predictions), "
                        "cosine, mse, kl, or your own as MODULE:FUNCTION or FILE.py:FUNCTION, called with (reference "
                        "outputs, candidate outputs, labels or None) and returning a loss, 0 for no damage: for a "
                        "detector, say, the share of the original's boxes lost (the output distances weigh box "
                        "coordinates, not decisions)")
    p.add_argument("--ratios", help="comma-separated fractions to try (default 0.1,0.2,...,0.9)")
    p.add_argument("--criterion", default="l1", choices=CRITERIA, help="which channels go first (default l1)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="run workers locally or on a Ray cluster")
    p.add_argument("--batch", type=int, default=32, help="samples per onnxruntime run (default 32)")
    p.add_argument("--reconstruct", action="store_true", help="score each candidate after re-fitting the layers that read "
                                                              "the group on --data (as prune --reconstruct leaves it), so "
                                                              "allocation prunes harder where reconstruction repairs; slower "
                                                              "(one fit and session per candidate, no --workers)")
    p.add_argument("-o", "--output", required=True, help="sensitivity file (JSON); an existing one is resumed")
    p.add_argument("--plot", metavar="PNG", help="also draw the curves")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("apply", help="apply a plan file (possibly edited by hand) to a model",
                       description="Apply a plan written by 'prune --plan-out' (or edited by hand) to the model it was made for.")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("plan", help="plan JSON file")
    _add_common_output(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("sparsify", help="zero the smallest weights (fine-grained sparsity) and write a compact, verified model",
                       description="Magnitude pruning of single weights in Conv, ConvTranspose, Gemm and MatMul layers: the "
                                   "smallest |w| of each layer (--sparsity), or |w| < Q * std(w) per layer (--quality, Han et "
                                   "al. 2015); one ranking across layers with --global. Depthwise convs stay dense unless "
                                   "--include-depthwise. Writes dense ONNX with exact zeros (compresses well) or, with "
                                   "--format sparse, ONNX sparse initializers; --masks-out writes the masks for retraining.")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the sparsified model (atomically)")
    how = p.add_argument_group("how much (choose one)")
    how.add_argument("--sparsity", type=float, help="fraction of each layer's weights to zero, in [0, 1), e.g. 0.75")
    how.add_argument("--quality", type=float, help="zero |w| < Q * std(w) of each layer (Han et al.), Q >= 0")
    which = p.add_argument_group("which weights")
    _add_global_ranking(which, "one magnitude ranking (or std) across all layers")
    which.add_argument("--ignore", action="append", metavar="REGEX", help="leave weights alone whose initializer or node name matches (repeatable)")
    which.add_argument("--include-depthwise", action="store_true", help="sparsify depthwise convs too (default: left dense)")
    which.add_argument("--protect-ends", action="store_true", help="leave the first and last layers' weights dense")
    p.add_argument("--format", default="dense", choices=["dense", "sparse"],
                   help="dense: exact zeros in ordinary initializers (default); sparse: ONNX sparse initializers (COO)")
    p.add_argument("--masks-out", metavar="NPZ", help="also write the masks (.npz keyed by initializer name, True = keep)")
    p.add_argument("--data", help="inputs (.npy, or .npz keyed by input name) for verification; default: random inputs")
    _add_input_shape(p)
    p.add_argument("--overwrite", action="store_true", help="allow -o to name the input model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_sparsify)

    p = sub.add_parser("report", help="one self-contained HTML page: summary, channels per layer, groups, sensitivity",
                       description="Write one HTML page that needs no network (inline CSS and SVG): parameters, MACs, file "
                                   "size and batch-1 onnxruntime latency of MODEL and PRUNED (or of the plan applied in "
                                   "memory), quality on --data, channels per layer before and after by origin-framework "
                                   "name, the channel groups (which layers are tied together, why blocked ones are "
                                   "blocked, channels kept with --plan) and the sensitivity curves (--sensitivity).")
    p.add_argument("model", help="the original ONNX model (never modified)")
    p.add_argument("pruned", nargs="?", help="the pruned model (default: --plan applied in memory, if given)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write (atomically)")
    p.add_argument("--plan", help="the plan that made PRUNED (channels kept per group, ratios chosen from a sensitivity analysis)")
    p.add_argument("--sensitivity", metavar="SENS_JSON", help="draw these sensitivity curves")
    p.add_argument("--data", help="inputs (.npz, optional 'labels') for the quality of PRUNED against MODEL")
    p.add_argument("--runs", type=int, default=30, help="timed rounds for the latency (default 30)")
    p.add_argument("--png-dir", metavar="DIR", help="also write the figures as PNG (needs matplotlib: the 'plot' extra)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export-ncnn", help="convert to ncnn (.param/.bin) with pnnx and check it against onnxruntime",
                       description="Convert with pnnx (optional package 'pnnx') in a temporary folder, run ncnn (optional "
                                   "package 'ncnn') and onnxruntime on the same random input, require a max relative error "
                                   "of 1e-4 (fp32; 2e-2 with --fp16), then write OUTDIR/<name>.ncnn.param and .bin.")
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("outdir", help="folder for <name>.ncnn.param and <name>.ncnn.bin")
    p.add_argument("--inputshape", action="append", metavar="1,3,224,224",
                   help="input shape, once per model input (default: the model's own, dynamic batch as 1)")
    p.add_argument("--fp16", action="store_true", help="store weights in fp16 and run ncnn's fp16 paths")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export_ncnn)

    p = sub.add_parser("quantize", help="static int8 quantization (onnxruntime) with fidelity and latency report",
                       description="onnxruntime quant_pre_process + quantize_static calibrated on --data (MinMax), uint8 "
                                   "activations and int8 weights. Reports top-1 agreement and max abs difference against "
                                   "the float model on --data (accuracy too if the .npz has 'labels') and batch-1 latency.")
    p.add_argument("model", help="float ONNX model file (never modified); prune first, then quantize")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model (atomically)")
    p.add_argument("--data", required=True, help="calibration inputs (.npy, or .npz keyed by input name, optional 'labels')")
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    p.add_argument("--format", default="qdq", choices=["qdq", "qoperator"], help="QuantizeLinear/DequantizeLinear pairs (default) or QLinear* ops")
    p.add_argument("--keep-float", metavar="first,last|NAME,...", help="nodes left in float: first / last Conv, Gemm or MatMul, or node names")
    p.add_argument("--runs", type=int, default=50, help="timed rounds for the latency report (default 50)")
    p.add_argument("--overwrite", action="store_true", help="allow -o to name the input model")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("bench", help="latency of models side by side (onnxruntime, optionally ncnn)",
                       description="Median and interquartile range of latency for each model, runs interleaved in one "
                                   "process, speedup against the first model. --ncnn also converts each float model with "
                                   "pnnx and times ncnn fp32 and fp16 (no batch axis in ncnn: batch B is B runs).")
    p.add_argument("models", nargs="+", help="ONNX model files; the first is the reference")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument("--ncnn", action="store_true", help="also time ncnn (optional packages pnnx and ncnn)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x640x640",
                   help="size of a dynamic input (repeatable; axis 0 is replaced by each --batch); default: sizes the "
                        "first model runs at")
    p.add_argument("--json", action="store_true", help="print the timings as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is seen here
        return code
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
    except BrokenPipeError:  # `onnxprune inspect m.onnx | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
