"""Teacher and pseudo-label sources by name: a run, or a blend's members at its weights (helpers.sources)."""

from __future__ import annotations

import pytest

from helpers.config import ConfigError
from helpers.errors import MissingRunError
from helpers.run_folder import BlendFolder, RunFolder
from helpers.sources import SOURCE_CHECKPOINT, combined_members, source_members


def _blend(name: str, weights: dict[str, float], checkpoint: str = "ema") -> BlendFolder:
    folder = BlendFolder.named(name)
    folder.path.mkdir(parents=True)
    members = [
        {"run": run, "checkpoint": checkpoint, "tta_views": ["identity"], "weight": w}
        for run, w in weights.items()
    ]
    folder.write_record({"name": name, "method": "greedy", "members": members})
    return folder


def _run(name: str) -> RunFolder:
    run = RunFolder.named(name).create()
    run.config.write_text("{}")
    return run


def test_a_run_is_one_member_at_its_best_score_checkpoints(outputs):
    _run("a")
    [member] = source_members("a", "teachers")
    assert (member.run.name, member.kind, member.weight) == ("a", SOURCE_CHECKPOINT, 1.0)


def test_a_blend_stands_for_its_weighted_members_at_the_checkpoint_it_blended(outputs):
    _blend("ab", {"a": 3.0, "b": 1.0, "c": 0.0})
    members = source_members("ab", "teachers")
    assert [(m.run.name, m.kind) for m in members] == [("a", "ema"), ("b", "ema")]  # c weighs nothing
    assert [m.weight for m in members] == pytest.approx([0.75, 0.25])


def test_several_sources_weigh_alike(outputs):
    _blend("ab", {"a": 3.0, "b": 1.0})
    _run("c")
    weights = {m.run.name: m.weight for m in combined_members(["ab", "c"], "teachers")}
    assert weights == pytest.approx({"a": 0.375, "b": 0.125, "c": 0.5})


def test_a_name_of_both_a_run_and_a_blend_is_refused(outputs):
    _run("ab")
    _blend("ab", {"a": 1.0})
    with pytest.raises(ConfigError, match="both a run .* and a blend"):
        source_members("ab", "pseudo_source")


def test_an_unknown_name_says_where_runs_and_blends_live(outputs):
    _blend("interrupted", {"a": 1.0}).clear_record()  # an interrupted blend write is no blend
    with pytest.raises(MissingRunError, match="teachers names 'interrupted'.*blends"):
        source_members("interrupted", "teachers")
