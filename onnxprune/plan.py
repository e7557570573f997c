"""Stage 6: the plan, the one document that crosses from analysis to surgery and to the origin
frameworks.  A plan is plain JSON (schema in README.md, "The plan file"):

    {"format": "onnxprune.plan", "version": 1,
     "model": {"file": ..., "sha256": ...},
     "options": {...how it was made...},
     "groups": [{"id", "channels", "keep": [...], "members": [
                   {"initializer", "node", "axis", "role", "size", "channel_of": null | [...]}]}],
     "summary": {"params": [before, after], "macs": [before, after]}}

`keep` lists the group's channel indices that stay.  Each member is one axis of one initializer
as used by one node; `channel_of[i]` is the group channel of element i of that axis (null when it
is the identity), so a member keeps the elements whose channel is in `keep`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .depgraph import DepGraph
from .errors import InputError
from .groups import Group, KeepMasks
from .ops import PARAM, Role
from .origin import member_scope

PLAN_FORMAT = "onnxprune.plan"
PLAN_VERSION = 1
BLOCKS_VERSION = 2
"""A plan that drops residual blocks is written as version 2 (`blocks`), so that an onnxprune
that knows only version 1 refuses it instead of ignoring the blocks; one without stays version 1."""
RENAMED_OPTIONS = {"normalise": "normalize"}
"""Option keys of older plans and their spelling now (one spelling across CLI, API and plan)."""


@dataclass
class Member:
    initializer: str
    node: str
    axis: int
    role: Role
    size: int
    channel_of: list[int] | None = None
    op: str = ""
    input: int = -1
    scope: str | None = None
    """Origin-framework layer of the node (onnxprune.origin.node_scope), for the hand-back."""

    def kept(self, keep: list[int] | set[int]) -> np.ndarray:
        """Indices of this axis's elements that stay when the group keeps channels `keep`."""
        channels = np.arange(self.size) if self.channel_of is None else np.asarray(self.channel_of)
        return np.nonzero(np.isin(channels, list(keep)))[0]


@dataclass
class GroupPlan:
    id: int
    channels: int
    keep: list[int]
    members: list[Member]

    @property
    def removed(self) -> int:
        return self.channels - len(self.keep)


@dataclass
class BlockPlan:
    """A residual block the plan removes (onnxprune.blocks.Block): the sum `output = shortcut +
    branch` becomes `output = shortcut`.  `module` is the origin-framework layer computing the
    branch, `influence` its ShortGPT block influence."""

    add: str
    shortcut: str
    branch: str
    output: str
    module: str | None = None
    modules: list[str] = field(default_factory=list)
    """Every outermost layer inside the branch (the hand-back replaces each by zeros)."""
    origin: str | None = None
    macs: int = 0
    influence: float | None = None


@dataclass
class Plan:
    groups: list[GroupPlan]
    model: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What the user should know about how the plan was made (not written to the file)."""
    blocks: list[BlockPlan] = field(default_factory=list)
    """Residual blocks removed before the channels of `groups` (whose members then refer to the
    model without those blocks)."""

    def to_json(self) -> str:
        doc = {"format": PLAN_FORMAT, "version": BLOCKS_VERSION if self.blocks else PLAN_VERSION, "model": self.model,
               "options": self.options, **({"blocks": [asdict(b) for b in self.blocks]} if self.blocks else {}),
               "groups": [asdict(g) for g in self.groups], "summary": self.summary}
        text = json.dumps(doc, indent=1)
        # one line per list of numbers keeps a plan readable and diffable
        return re.sub(r"\[[\d\s,\-]*\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",") if v.strip()) + "]", text) + "\n"

    def write(self, path: str | Path) -> None:
        from .save import write_atomic

        write_atomic(Path(path), self.to_json().encode())

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> "Plan":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: not a JSON plan ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise InputError(f"{source}: not an onnxprune plan (missing \"format\": \"{PLAN_FORMAT}\")")
        if doc.get("version") not in (PLAN_VERSION, BLOCKS_VERSION):
            raise InputError(f"{source}: plan version {doc.get('version')} is not supported (this onnxprune reads versions "
                             f"{PLAN_VERSION} and {BLOCKS_VERSION})")
        try:
            groups = [GroupPlan(id=int(g["id"]), channels=int(g["channels"]), keep=checked_keep(g, source),
                                members=[Member(**{**m, "role": Role(m["role"])}) for m in g["members"]]) for g in doc["groups"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: malformed plan group ({exc})") from None
        try:
            blocks = [BlockPlan(**b) for b in doc.get("blocks", [])] if doc.get("version") == BLOCKS_VERSION else []
        except TypeError as exc:
            raise InputError(f"{source}: malformed plan block ({exc})") from None
        options = dict(doc.get("options", {}))
        for old, new in RENAMED_OPTIONS.items():  # plans written before the option was renamed
            if old in options:
                options.setdefault(new, options.pop(old))
        return cls(groups=groups, model=doc.get("model", {}), options=options, summary=doc.get("summary", {}), blocks=blocks)

    @classmethod
    def read(cls, path: str | Path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such plan file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a plan file (not UTF-8 JSON text)") from None
        return cls.from_json(text, str(path))


def checked_keep(group: dict, source: str) -> list[int]:
    """A group's `keep` as read from a plan file: channel indices, each once, in range; returned
    sorted (a hand-edited plan may list them in any order).  Anything else is refused, naming the
    group: a silent int() would turn 0.5 into channel 0 and a duplicate would pass unnoticed."""
    gid, channels, keep = group["id"], group["channels"], group["keep"]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise InputError(f"{source}: group {gid}: \"channels\" must be a positive integer, not {channels!r}")
    if not isinstance(keep, list):
        raise InputError(f"{source}: group {gid}: \"keep\" must be a list of channel indices, not {keep!r}")
    seen: set[int] = set()
    for k in keep:
        if not isinstance(k, int) or isinstance(k, bool):
            raise InputError(f"{source}: group {gid}: keep entry {k!r} is not a channel index (an integer)")
        if not 0 <= k < channels:
            raise InputError(f"{source}: group {gid}: channel {k} is out of range 0..{channels - 1}")
        if k in seen:
            raise InputError(f"{source}: group {gid}: channel {k} is listed more than once in keep")
        seen.add(k)
    if not keep:
        raise InputError(f"{source}: group {gid}: keep is empty (every group keeps at least one channel)")
    return sorted(keep)


def members_of(dg: DepGraph, group: Group) -> list[Member]:
    members = []
    for dim in group.const_dims:
        node = dg.index.model.graph.node[dim.use]
        classes = group.classes[dim]
        identity = len(classes) == group.n_channels and np.array_equal(classes, np.arange(group.n_channels))
        members.append(Member(initializer=dim.tensor, node=node.name or node.output[0], axis=dim.axis,
                              role=group.roles.get(dim, PARAM), size=group.sizes[dim],
                              channel_of=None if identity else classes.tolist(), op=node.op_type, input=dim.slot,
                              scope=member_scope(dg.index, dim.use)))
    return members


def make_plan(dg: DepGraph, keep: KeepMasks, model_info: dict | None = None,
              options: dict | None = None) -> Plan:
    groups = [GroupPlan(id=g.id, channels=g.n_channels, keep=np.nonzero(keep.get(g.id, np.ones(g.n_channels, bool)))[0].tolist(),
                        members=members_of(dg, g)) for g in dg.prunable_groups]
    return Plan(groups=groups, model=model_info or {}, options=options or {})


def _member_key(m: Member) -> tuple:
    return (m.initializer, m.node, m.axis)


def resolve(plan: Plan, dg: DepGraph, source: str = "plan") -> KeepMasks:
    """Match the plan's groups to the model's and return keep masks; name the first mismatch."""
    by_member = {}
    for group in dg.prunable_groups:
        for member in members_of(dg, group):
            by_member[_member_key(member)] = (group, member)
    keep: KeepMasks = {}
    for gp in plan.groups:
        if not gp.members:
            raise InputError(f"{source}: group {gp.id} has no members")
        first = gp.members[0]
        if _member_key(first) not in by_member:
            raise InputError(f"{source}: group {gp.id}: initializer '{first.initializer}' axis {first.axis} at node "
                             f"'{first.node}' is not a prunable channel axis of this model (plan for another model?)")
        group, _ = by_member[_member_key(first)]
        expected = {_member_key(m) for m in members_of(dg, group)}
        given = {_member_key(m) for m in gp.members}
        if expected != given:
            extra = sorted(given - expected) or sorted(expected - given)
            raise InputError(f"{source}: group {gp.id} does not match the model: member {extra[0][0]} (node {extra[0][1]}, "
                             f"axis {extra[0][2]}) {'is not in' if given - expected else 'is missing from'} this group")
        if gp.channels != group.n_channels:
            raise InputError(f"{source}: group {gp.id} has {gp.channels} channels in the plan but {group.n_channels} in the model")
        for m in gp.members:
            if m.size != by_member[_member_key(m)][1].size:
                raise InputError(f"{source}: group {gp.id}: '{m.initializer}' axis {m.axis} has size {m.size} in the plan but not in the model")
        mask = np.zeros(group.n_channels, dtype=bool)
        bad = [k for k in gp.keep if not 0 <= k < group.n_channels]
        if bad:
            raise InputError(f"{source}: group {gp.id}: channel {bad[0]} is out of range 0..{group.n_channels - 1}")
        mask[gp.keep] = True
        if not group.min_keep_ok(mask):
            raise InputError(f"{source}: group {gp.id}: keeping only {len(gp.keep)} channel(s) would empty a layer (keep at least one channel of every member)")
        if group.id in keep:
            raise InputError(f"{source}: group {gp.id} names the same channels as another group of the plan")
        keep[group.id] = mask
    return keep
