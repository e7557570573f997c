"""Knowledge distillation of a pruned ONNX model toward the original, on unlabeled inputs, with no
training code: the pruned graph runs in PyTorch (onnxprune.ops.torch_exec), the teacher in
onnxruntime, and the loss is the teacher-normalised squared error of every output (and of the
intermediate tensors named in `FinetuneOptions.features`, through the kept channels).  Trained are
the weights and biases of the layers that `NodeContext.rule.linear_view` can read (Conv, Gemm,
MatMul and their bias Add); the result is the same ONNX graph with those constants replaced, by
name, in their own dtype and shape, and nothing else changed.

Needs torch (`pip install 'onnxprune[torch]'`).  Adam with a cosine learning-rate schedule; an
optional time budget (`minutes`) ends training early, the schedule then being set by the budget.
A slice of the samples (`holdout`) is not trained on: the weights written are those of the epoch
with the lowest loss on it, or the student's own when no epoch beat them, so distillation that
overfits a small calibration set (or a learning rate too high for the model) never returns a
model further from the teacher on unseen samples than it started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from .errors import InputError
from .graph import ModelIndex
from .ops import NodeContext
from .runtime import make_session, sample_count, with_outputs


@dataclass
class FinetuneOptions:
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 16
    minutes: float | None = None
    """Stop after this much wall time (the cosine schedule then spans the budget)."""
    seed: int = 0
    features: dict[str, "FeatureIndex"] = field(default_factory=dict)
    """Intermediate tensors to match as well (name -> the teacher's elements each student axis
    keeps, see `kept_channels`; {} where the shapes are the same), each one's normalised squared
    error added to the output loss with weight `feature_weight`."""
    feature_weight: float = 1.0
    holdout: float = 0.125
    """Fraction of the samples kept out of training to choose the epoch written (0: the last
    epoch's weights, as trained on every sample); none are held out below 8 samples."""


FeatureIndex = dict[int, np.ndarray]
"""Axis -> indices of the teacher's elements that the student's tensor keeps on that axis."""


def kept_channels(dg, keep: dict[int, np.ndarray]) -> dict[str, FeatureIndex]:
    """For every activation tensor that pruning with `keep` (group id -> keep mask, on the
    teacher's dependency graph `dg`) narrows: the teacher's elements the pruned tensor keeps, by
    axis.  Feature distillation compares the student's tensor with the teacher's at these
    indices; tensors not listed keep their shape."""
    index: dict[str, FeatureIndex] = {}
    for group in dg.groups:
        mask = keep.get(group.id)
        if mask is None or mask.all():
            continue
        for dim in group.dims:
            if not dim.is_const:
                index.setdefault(dim.tensor, {})[dim.axis] = group.kept_elements(dim, mask)
    return index


def compose(outer: dict[str, FeatureIndex], inner: dict[str, FeatureIndex]) -> dict[str, FeatureIndex]:
    """Indices into the first model after two prunes: `outer` maps model 0 to model 1, `inner`
    model 1 to model 2 (the iterative loop composes one prune per step)."""
    out = {name: dict(axes) for name, axes in outer.items()}
    for name, axes in inner.items():
        for axis, idx in axes.items():
            before = out.get(name, {}).get(axis)
            out.setdefault(name, {})[axis] = idx if before is None else before[idx]
    return out


def _select(t: np.ndarray, index: FeatureIndex) -> np.ndarray:
    for axis, idx in index.items():
        t = np.take(t, idx, axis=axis)
    return t


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    losses: list[float] = field(default_factory=list)
    """Mean distillation loss of each epoch (the last one may be partial, under a time budget)."""
    first_loss: float = 0.0
    """The loss of the untrained student on the first batches (before any step)."""
    trained: list[str] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    holdout_losses: list[float] = field(default_factory=list)
    """The loss on the held-out samples before training, then after each epoch ([] without them)."""
    kept_epoch: int | None = None
    """The epoch whose weights were written (0: none beat the untrained student, which is
    returned unchanged); None without held-out samples (the last epoch's)."""


def trainable_constants(index: ModelIndex) -> set[str]:
    """Weights and biases of the layers with a linear view, where they are float constants."""
    names = set()
    for i, node in enumerate(index.model.graph.node):
        ctx = NodeContext(index, i)
        view = ctx.rule.linear_view(ctx)
        if view is None:
            continue
        names.add(node.input[view.weight_slot])
        if view.bias is not None and view.bias.value is not None:
            names.add(index.model.graph.node[view.bias.node].input[view.bias.slot])
    return {n for n in names if index.is_const(n) and np.issubdtype(index.const(n).dtype, np.floating)}


def _write_back(model: onnx.ModelProto, index: ModelIndex, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with these constants replaced by name (initializers or Constant nodes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for name, value in values.items():
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name=name)
        if name in inits:
            inits[name].CopyFrom(tensor)
        else:
            node = out.graph.node[index.constant_nodes[name]]
            next(a for a in node.attribute if a.name == "value").t.CopyFrom(tensor)
    return out


def _nmse(output, target: np.ndarray):
    """Squared error normalised by the target's mean square: outputs and features of any scale weigh alike."""
    import torch

    return torch.mean((output - torch.from_numpy(target)) ** 2) / float(np.mean(target.astype(np.float64) ** 2) + 1e-12)


def _check_features(student: ModelIndex, teacher: ModelIndex, features: dict[str, FeatureIndex]) -> None:
    """Every feature is a float tensor both graphs compute, and the kept indices fit the teacher's."""
    for name, axes in features.items():
        for which, index in (("pruned model", student), ("teacher", teacher)):
            if name not in index.producer and name not in {vi.name for vi in index.model.graph.input}:
                raise InputError(f"finetune: --features: the {which} computes no tensor '{name}'")
        s_shape, t_shape = student.shape(name), teacher.shape(name)
        if s_shape is None or t_shape is None or len(s_shape) != len(t_shape):
            continue  # shapes unknown here: onnxruntime and torch check at the first step
        for axis, (a, b) in enumerate(zip(s_shape, t_shape)):
            want = len(axes[axis]) if axis in axes else b
            if isinstance(a, int) and isinstance(want, int) and a > 0 and want > 0 and a != want:
                raise InputError(f"finetune: --features: '{name}' has {a} elements on axis {axis} in the pruned model and "
                                 f"{want} in the teacher; pass the plan that pruned it (--plan) to match the kept channels")


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray],
             options: FinetuneOptions | None = None, progress: bool = False) -> FinetuneResult:
    """Distil `student` (a pruned model) toward `teacher` (the original) on `feeds`."""
    try:
        import torch

        from .ops.torch_exec import GraphModule, UnsupportedOp
    except ImportError:
        raise InputError("finetune needs PyTorch: pip install 'onnxprune[torch]'") from None
    options = options or FinetuneOptions()
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    index = ModelIndex.build(student)
    names = trainable_constants(index)
    if not names:
        raise InputError("finetune: the model has no Conv, Gemm or MatMul weight to train")
    try:
        net = GraphModule(student, index, names)
    except UnsupportedOp as exc:
        raise InputError(f"finetune: {exc}") from None
    features = options.features
    teacher_source, teacher_arrays = (str(teacher) if isinstance(teacher, Path) else teacher), None
    if features:  # the teacher also outputs the features (only then is it loaded and indexed here)
        teacher_model = teacher if isinstance(teacher, onnx.ModelProto) else onnx.load(str(teacher))
        teacher_index = ModelIndex.build(teacher_model)
        _check_features(index, teacher_index, features)
        teacher_source, teacher_arrays = with_outputs(teacher_index, list(features))
    net.extra = list(features)
    teacher_run = make_session(teacher_source, arrays=teacher_arrays)
    n_out = len(student.graph.output)
    n = sample_count(feeds)
    rng = np.random.default_rng(options.seed)
    held = np.sort(rng.permutation(n)[:int(n * options.holdout)]) if n >= 8 and options.holdout > 0 else np.array([], int)
    train = np.setdiff1d(np.arange(n), held)
    n_train = len(train)
    per_epoch = -(-n_train // options.batch_size)
    total = per_epoch * options.epochs
    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
    result = FinetuneResult(student, trained=sorted(names))
    deadline = start + options.minutes * 60 if options.minutes else None

    def loss_on(part: dict[str, np.ndarray], targets: list[np.ndarray]):
        outputs = net(**{k: torch.from_numpy(v) for k, v in part.items()})
        loss = sum(_nmse(o, t) for o, t in zip(outputs[:n_out], targets[:n_out]) if np.issubdtype(t.dtype, np.floating))
        for o, t, name in zip(outputs[n_out:], targets[n_out:], features):
            loss = loss + options.feature_weight * _nmse(o, np.ascontiguousarray(_select(t, features[name])))
        return loss

    checks = [({k: v[held[i:i + options.batch_size]] for k, v in feeds.items()}) for i in range(0, len(held), options.batch_size)]
    checks = [(part, teacher_run.run(None, part)) for part in checks]

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_on(part, targets)) for part, targets in checks]))

    best = (held_out_loss(), 0, None) if checks else None  # (loss, epoch, weights; None: the student's own)
    if best is not None:
        result.holdout_losses.append(best[0])
    bar = tqdm(total=total, desc="distill", unit="step", disable=not progress, leave=False)
    step = 0
    for epoch in range(options.epochs):
        order = train[rng.permutation(n_train)]
        losses = []
        for b in range(per_epoch):
            idx = np.sort(order[b * options.batch_size:(b + 1) * options.batch_size])
            part = {k: v[idx] for k, v in feeds.items()}
            loss = loss_on(part, teacher_run.run(None, part))
            if step == 0:
                result.first_loss = float(loss.detach())
            # cosine schedule over the steps, or over the time budget
            fraction = step / total if deadline is None else (time.perf_counter() - start) / (deadline - start)
            for group in optimizer.param_groups:
                group["lr"] = options.lr * 0.5 * (1 + np.cos(np.pi * min(fraction, 1.0)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if deadline is not None and time.perf_counter() >= deadline:
                break
        result.losses.append(float(np.mean(losses)))
        if best is not None:
            result.holdout_losses.append(held_out_loss())
            if result.holdout_losses[-1] < best[0]:
                best = (result.holdout_losses[-1], epoch + 1, net.trained())
        if deadline is not None and time.perf_counter() >= deadline:
            break
    bar.close()
    if best is None:
        result.model = _write_back(student, index, net.trained())
    else:
        result.kept_epoch = best[1]
        result.model = student if best[2] is None else _write_back(student, index, best[2])
    result.steps = step
    result.seconds = time.perf_counter() - start
    return result
