"""A teacher or pseudo-label source by name: the members it stands for, each a run folder, the checkpoint
kind it is read at and its weight.

A name is a run of outputs/runs: one member, weight 1, read at its `best_score` checkpoints. Distillation
(helpers.distill) and pseudo-labelling (helpers.pseudo_labels) both resolve names here alone, so another
kind of source (a weighted blend of runs) is one more case of `source_members`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from helpers.errors import MissingRunError
from helpers.run_folder import RunFolder

SOURCE_CHECKPOINT = "best_score"  # the checkpoint kind a run named as a source is read at


@dataclass(frozen=True)
class SourceMember:
    """One run of a source, the checkpoint kind its fold models are read at, and its weight."""

    run: RunFolder
    kind: str
    weight: float


def source_members(name: str, setting: str) -> list[SourceMember]:
    """The members a source name stands for, weights summing to 1; `setting` names where the name was
    given, for the error when nothing of that name exists."""
    run = RunFolder.named(name)
    if not run.config.exists():
        raise MissingRunError(
            f"{setting} names {name!r}, but {run.config} does not exist: train that run first (01 and 03), "
            f"or correct the name (runs are the folders of {run.path.parent})"
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
