"""`onnxprune report`: one self-contained HTML page about a model and its pruned version.

What it shows: a summary (parameters, MACs, file size, batch-1 latency measured with onnxruntime,
quality on `--data`), the channels of every layer before and after by origin-framework name, the
groups (which layers are tied together, how many channels each keeps, why blocked ones are
blocked) and the sensitivity curves.  The page needs nothing from the network: CSS is inline and
the figures are inline SVG written here (no matplotlib needed, no CDN, no external font).
`--png-dir` also exports the figures as PNG, drawn by matplotlib (the `plot` extra).

The pruned model is the file given, or the plan applied in memory (and verified) when only
`--plan` is given; without either the page describes the original alone."""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .units import si
from . import cost
from .api import load, save
from .errors import InputError
from .graph import ModelIndex
from .load import load_model
from .plan import Plan, resolve
from .quality import Quality, labels_for, measure
from .sensitivity import Sensitivity, group_colours, group_label


@dataclass
class ModelFacts:
    name: str
    params: int
    macs: int
    file_bytes: int
    latency_ms: float | None = None
    latency_note: str = ""


@dataclass
class LayerRow:
    """One layer with output channels (Conv, Gemm, MatMul), before and after pruning."""

    name: str
    node: str
    op: str
    before: int
    after: int | None = None


@dataclass
class GroupRow:
    id: int
    channels: int
    prunable: bool
    blocked: str | None
    layers: list[str]
    kept: int | None = None


@dataclass
class Curve:
    label: str
    ratios: list[float]
    losses: list[float]
    chosen: float | None = None


@dataclass
class ReportData:
    title: str
    models: list[ModelFacts]
    layers: list[LayerRow]
    groups: list[GroupRow]
    quality: Quality | None = None
    curves: list[Curve] = field(default_factory=list)
    metric: str | None = None
    notes: list[str] = field(default_factory=list)
    sensitivity: Sensitivity | None = None
    chosen: dict[int, float] = field(default_factory=dict)
    """Ratios per group that the plan chose from the sensitivity analysis (circled on the curves)."""


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _facts(path: Path, index: ModelIndex) -> ModelFacts:
    return ModelFacts(path.name, cost.total_params(index), cost.total_macs(index), _file_bytes(path))


def _latency(facts: list[ModelFacts], paths: list[Path], runs: int) -> None:
    from .deploy.bench import bench

    for fact, timing in zip(facts, bench(paths, (1,), threads=1, runs=runs)):
        fact.latency_ms, fact.latency_note = timing.median_ms, timing.note


def build(model_path: str | Path, pruned_path: str | Path | None = None, plan_path: str | Path | None = None,
          sensitivity_path: str | Path | None = None, data: str | Path | None = None, runs: int = 30) -> ReportData:
    """Everything the page shows, measured now (latency, quality) or read from the files given."""
    model_path = Path(model_path)
    model = load(model_path)
    plan = Plan.read(plan_path) if plan_path else None
    info = model.inspect()
    origins = {l["node"]: l["origin"] for l in info["layers"]}
    report = ReportData(model_path.name, [_facts(model_path, model.index)], [], [])
    kept = {gid: int(mask.sum()) for gid, mask in resolve(plan, model.depgraph, str(plan_path)).items()} if plan else {}
    with tempfile.TemporaryDirectory(prefix="onnxprune_report_") as tmp:
        pruned_file = Path(pruned_path) if pruned_path else None
        if pruned_file is None and plan is not None:
            result = model.apply(plan, data, source=str(plan_path))
            pruned_file = save(result.model, Path(tmp) / f"{model_path.stem}_pruned.onnx")
            report.quality = result.quality
            report.notes.append(f"pruned model: {Path(plan_path).name} applied to {model_path.name} (verified, not saved)")
        after_layers: dict[str, int | None] = {}
        if pruned_file is not None:
            pruned_index = ModelIndex.build(load_model(pruned_file).model)
            report.models.append(_facts(pruned_file, pruned_index))
            after_layers = {c.node: c.channels for c in cost.layer_costs(pruned_index)}
            if data is not None and report.quality is None:
                feeds = model.calibration(data)
                report.quality = measure(str(model_path), str(pruned_file), feeds,
                                         labels_for(data, len(next(iter(feeds.values())))))
        _latency(report.models, [model_path] + ([pruned_file] if pruned_file else []), runs)
    for layer in cost.layer_costs(model.index):
        if layer.channels:
            report.layers.append(LayerRow(origins.get(layer.node) or layer.node, layer.node, layer.op_type,
                                          layer.channels, after_layers.get(layer.node) if pruned_file else None))
    for g in info["groups"]:
        report.groups.append(GroupRow(g["id"], g["channels"], g["prunable"], g["blocked"], g["origins"], kept.get(g["id"])))
    if plan is None and pruned_file is not None:
        report.notes.append("give --plan PLAN to see the channels each group keeps")
    if sensitivity_path:
        sens = Sensitivity.read(Path(sensitivity_path))
        chosen = {int(g): r for g, r in (plan.options.get("sensitivity_ratios") or {}).items()} if plan else {}
        report.metric, report.sensitivity, report.chosen = sens.metric, sens, chosen
        for gid in sorted(sens.groups):
            ratios, losses = sens.curve(gid)
            report.curves.append(Curve(group_label(sens, gid), [float(r) for r in ratios], [float(v) for v in losses], chosen.get(gid)))
    return report


# --- figures -------------------------------------------------------------------------------

E = html.escape
BEFORE, AFTER = "#c9d3df", "#1f77b4"


def channel_bars_svg(layers: list[LayerRow]) -> str:
    """Horizontal bars, one row per layer: the original channel count (light) with the pruned
    one over it (blue), labelled by origin-framework name."""
    row, label_w, bar_w, top = 18, 260, 520, 24
    widest = max((l.before for l in layers), default=1)
    height = top + row * len(layers) + 8
    parts = [f'<svg class="figure" role="img" aria-label="channels per layer" width="{label_w + bar_w + 110}" height="{height}" '
             f'viewBox="0 0 {label_w + bar_w + 110} {height}">',
             f'<rect x="{label_w}" y="4" width="12" height="10" fill="{BEFORE}"/><text x="{label_w + 16}" y="13" class="small">before</text>',
             f'<rect x="{label_w + 70}" y="4" width="12" height="10" fill="{AFTER}"/><text x="{label_w + 86}" y="13" class="small">after</text>']
    for i, layer in enumerate(layers):
        y = top + i * row
        name = layer.name if len(layer.name) <= 38 else "..." + layer.name[-35:]
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" class="small"><title>{E(layer.node)} ({E(layer.op)})'
                     f'</title>{E(name)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{bar_w * layer.before / widest:.1f}" height="13" fill="{BEFORE}"/>')
        if layer.after is not None:
            parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{bar_w * layer.after / widest:.1f}" height="13" fill="{AFTER}"/>')
        text = f"{layer.before}" if layer.after is None else f"{layer.before} \u2192 {layer.after}"
        parts.append(f'<text x="{label_w + bar_w * layer.before / widest + 6:.1f}" y="{y + 12}" class="small">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(curves: list[Curve], metric: str) -> str:
    """Sensitivity curves: loss against the fraction of a group's channels removed, one colour per
    group (distinct beyond 10), chosen ratios circled, legend by origin-framework name."""
    left, top, w, h = 60, 20, 560, 320
    legend_x = left + w + 24
    step = _tick_step(max((max(c.losses) for c in curves if c.losses), default=1.0) or 1.0)
    top_loss = step * np.ceil(max((max(c.losses) for c in curves if c.losses), default=1.0) / step - 1e-9) or step
    height = max(top + h + 50, top + 16 * len(curves) + 10)

    def x(r: float) -> float:
        return left + w * r

    def y(v: float) -> float:
        return top + h - h * v / top_loss

    parts = [f'<svg class="figure" role="img" aria-label="sensitivity curves" width="{legend_x + 330}" height="{height}" '
             f'viewBox="0 0 {legend_x + 330} {height}">',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fff" stroke="#999"/>']
    for k in range(6):
        r = k / 5
        parts.append(f'<line x1="{x(r):.1f}" y1="{top}" x2="{x(r):.1f}" y2="{top + h}" stroke="#eee"/>'
                     f'<text x="{x(r):.1f}" y="{top + h + 16}" text-anchor="middle" class="small">{r:.0%}</text>')
    for v in np.arange(0.0, top_loss + step / 2, step):
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + w}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="small">{v:.3g}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{top + h + 36}" text-anchor="middle" class="small">fraction of the group\'s '
                 f'channels removed</text><text x="14" y="{top + h / 2}" transform="rotate(-90 14 {top + h / 2})" '
                 f'text-anchor="middle" class="small">loss ({E(metric)})</text>')
    for i, (curve, colour) in enumerate(zip(curves, group_colours(len(curves)))):
        points = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in zip(curve.ratios, curve.losses))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"><title>{E(curve.label)}</title></polyline>')
        parts.extend(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>' for r, v in zip(curve.ratios, curve.losses))
        if curve.chosen is not None and curve.ratios:
            v = float(np.interp(curve.chosen, curve.ratios, curve.losses))
            parts.append(f'<circle cx="{x(curve.chosen):.1f}" cy="{y(v):.1f}" r="7" fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = top + 16 * i
        parts.append(f'<line x1="{legend_x}" y1="{ly + 6}" x2="{legend_x + 18}" y2="{ly + 6}" stroke="{colour}" stroke-width="3"/>'
                     f'<text x="{legend_x + 24}" y="{ly + 10}" class="small">{E(curve.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tick_step(top: float) -> float:
    """A round axis step (1, 2 or 5 times a power of ten) giving about five ticks up to `top`."""
    raw = top / 5
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def write_pngs(report: ReportData, folder: Path) -> list[Path]:
    """The page's figures as PNG files (matplotlib): channels.png and, with curves, sensitivity.png."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .save import write_atomic
    from .sensitivity import sensitivity_figure

    written = []
    figures = {}
    if report.layers:
        fig, ax = plt.subplots(figsize=(9, 0.28 * len(report.layers) + 1.2), dpi=110)
        names = [l.name for l in report.layers][::-1]
        ax.barh(names, [l.before for l in report.layers][::-1], color=BEFORE, label="before")
        if any(l.after is not None for l in report.layers):
            ax.barh(names, [l.after or 0 for l in report.layers][::-1], color=AFTER, label="after")
        ax.set_xlabel("output channels")
        ax.set_title(f"channels per layer: {report.title}")
        ax.legend(loc="lower right", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        figures["channels.png"] = fig
    if report.sensitivity is not None:
        figures["sensitivity.png"] = sensitivity_figure(report.sensitivity, report.chosen or None)
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        write_atomic(folder / name, buffer.getvalue())
        written.append(folder / name)
    return written


# --- the page ------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1140px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f5f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.blocked td { color: #8a5a00; background: #fff8ec; } tr.prunable td.status { color: #1a7f37; }
.note { color: #555; font-size: 13px; } .small { font-size: 11px; fill: #333; }
.figure { display: block; margin: 8px 0; background: #fcfcfd; }
.good { color: #1a7f37; } .bad { color: #b42318; }
"""


def _summary_table(report: ReportData) -> str:
    rows = []
    base = report.models[0]
    for facts in report.models:
        latency = f"{facts.latency_ms:.3f} ms" if facts.latency_ms is not None else E(facts.latency_note or "-")
        def ratio(a: int, b: int) -> str:
            return f" ({a / b:.1%})" if facts is not base and b else ""

        speed = f" ({base.latency_ms / facts.latency_ms:.2f}x)" if facts is not base and facts.latency_ms and base.latency_ms else ""
        rows.append(f"<tr><td>{E(facts.name)}</td><td class=num>{si(facts.params)}{ratio(facts.params, base.params)}</td>"
                    f"<td class=num>{si(facts.macs)}{ratio(facts.macs, base.macs)}</td>"
                    f"<td class=num>{si(facts.file_bytes)}B</td><td class=num>{latency}{speed}</td></tr>")
    return ("<table><tr><th>model</th><th>parameters</th><th>MACs per sample</th><th>file</th>"
            "<th>latency (onnxruntime, batch 1, 1 thread, median)</th></tr>" + "".join(rows) + "</table>")


def _quality_table(q: Quality) -> str:
    rows = [("samples", str(q.samples)),
            ("top-1 agreement with the original", f"{q.top1_agreement:.2%}" if q.top1_agreement is not None else "- (not a classifier output)"),
            ("relative error (max |diff| / max |original|)", f"{q.rel_error:.3e}"),
            ("max abs diff", f"{q.max_abs_diff:.4g}")]
    if q.accuracy_before is not None:
        cls = "good" if q.accuracy_after >= q.accuracy_before - 0.01 else "bad"
        rows.append(("accuracy (labels in the data)", f"{q.accuracy_before:.2%} \u2192 <span class={cls}>{q.accuracy_after:.2%}</span>"))
    return "<table>" + "".join(f"<tr><th>{E(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _groups_table(groups: list[GroupRow]) -> str:
    rows = []
    for g in groups:
        status = "prunable" if g.prunable else "blocked"
        kept = "-" if g.kept is None else f"{g.kept} ({g.kept / g.channels:.0%})"
        reason = "" if g.prunable else E(g.blocked or "")
        rows.append(f"<tr class={status}><td class=num>{g.id}</td><td class=num>{g.channels}</td><td class=num>{kept}</td>"
                    f"<td class=status>{status}</td><td>{E(', '.join(g.layers))}</td><td>{reason}</td></tr>")
    return ("<table><tr><th>group</th><th>channels</th><th>kept</th><th>status</th><th>layers tied together "
            "(origin names)</th><th>why blocked</th></tr>" + "".join(rows) + "</table>")


def render_html(report: ReportData) -> str:
    """The page, self-contained: inline CSS and inline SVG only."""
    pruned = len(report.models) > 1
    body = [f"<h1>onnxprune report: {E(report.title)}</h1>",
            f'<p class="note">{E("; ".join(report.notes))}</p>' if report.notes else "",
            "<h2>Summary</h2>", _summary_table(report)]
    if report.quality is not None:
        body += ["<h2>Quality on the data</h2>", _quality_table(report.quality)]
    body += [f"<h2>Channels per layer{' before and after' if pruned else ''}</h2>", channel_bars_svg(report.layers),
             "<h2>Groups</h2>",
             '<p class="note">A group is a set of channels that must be removed together: every layer listed produces or '
             "consumes the same channels (residual adds, concats, depthwise convs tie them). Blocked groups cannot be "
             "pruned, for the reason given.</p>", _groups_table(report.groups)]
    if report.curves:
        body += ["<h2>Sensitivity</h2>",
                 '<p class="note">Loss when only one group loses a fraction of its channels (circles: the ratios a '
                 "plan chose).</p>", curves_svg(report.curves, report.metric or "")]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>onnxprune report: "
            f"{E(report.title)}</title><style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def check_png_support() -> None:
    """--png-dir needs matplotlib; refuse before any work when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("options: --png-dir needs matplotlib (pip install 'onnxprune[plot]'); "
                         "the HTML report itself does not") from None
