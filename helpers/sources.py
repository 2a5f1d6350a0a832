"""A teacher or pseudo-label source by name: the members it stands for, each a run folder, the checkpoint
kind it is read at and its weight.

A name is a run of outputs/runs (one member, weight 1, read at its `best_score` checkpoints) or a blend of
outputs/blends (its members at the checkpoint kind it blended, with its weights; a `stack` blend's weights
are each member's share of its meta-model's coefficients, so its members stand in for the meta-model as a
weighted mean). Distillation (helpers.distill) and pseudo-labelling (helpers.pseudo_labels) both resolve
names here alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from helpers.config import ConfigError
from helpers.errors import MissingRunError
from helpers.run_folder import BlendFolder, RunFolder

SOURCE_CHECKPOINT = "best_score"  # the checkpoint kind a run named as a source is read at


@dataclass(frozen=True)
class SourceMember:
    """One run of a source, the checkpoint kind its fold models are read at, and its weight."""

    run: RunFolder
    kind: str
    weight: float


def source_members(name: str, setting: str) -> list[SourceMember]:
    """The members a source name stands for, weights summing to 1; `setting` names where the name was
    given, for the error when nothing, or both a run and a blend, of that name exists."""
    run, blend = RunFolder.named(name), BlendFolder.named(name)
    if run.config.exists() and blend.complete():
        raise ConfigError(
            f"{setting} names {name!r}, which is both a run ({run.path}) and a blend ({blend.path}): rename one"
        )
    if blend.complete():
        members = blend.read_members()
        total = sum(m.weight for m in members)
        return [
            SourceMember(RunFolder.named(m.run), m.checkpoint, m.weight / total)
            for m in members
            if m.weight > 0
        ]
    if not run.config.exists():
        raise MissingRunError(
            f"{setting} names {name!r}, but neither {run.config} nor {blend.record} exists: train that run "
            f"first (01 and 03) or write that blend (07), or correct the name (runs are the folders of "
            f"{run.path.parent}, blends those of {blend.path.parent})"
        )
    return [SourceMember(run, SOURCE_CHECKPOINT, 1.0)]


def combined_members(names: Sequence[str], setting: str) -> list[SourceMember]:
    """Several sources as one: each name weighs alike, shared among its own members by their weights."""
    members = []
    for name in names:
        own = source_members(name, setting)
        total = sum(m.weight for m in own)
        members += [SourceMember(m.run, m.kind, m.weight / total / len(names)) for m in own]
    return members
