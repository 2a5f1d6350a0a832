"""Blending finished runs into one prediction: `python -m helpers.blend`, and notebooks/07_blend.

    python -m helpers.blend                                   # every compatible finished run, stacked
    python -m helpers.blend --runs a,b,c --method greedy --name abc_greedy

A run is a candidate when 04 wrote its oof.csv and evaluation.json (and 05 its test_probabilities.csv,
where the data has a test set). Its probabilities are those of one checkpoint kind and TTA setting: the
ones 04 evaluated with, which must be the ones its config.json gives 05. Members must be of one task, one
class list and one split: the same out-of-fold images, each in the same fold, with the same labels. A run
that is not is refused by name with the reason; with no runs named, the largest group of compatible runs
is blended and the others are listed with their reasons.

The arithmetic (mean, greedy selection, stacking, the nested estimate) is helpers.fusion's, on plain
arrays. Three figures are kept apart wherever they are shown (`NOTES`): the out-of-fold score (chosen and
scored on the same rows: optimistic), the nested estimate (chosen on the other folds, scored on the
held-out one) and the test score. The blend's oof.csv holds its held-out (nested) predictions, as a run's
holds predictions of rows its model did not train on; a multilabel blend's thresholds are tuned again on
them, by the task's `fit_thresholds`, and its decisions are the task's.

The blend is a folder beside the runs (helpers.run_folder.BlendFolder): blend.json (members with run,
checkpoint kind, TTA views and weight; method; combiner; the three scores), oof.csv, test_probabilities.csv,
thresholds.json and submission.csv. Every file is written atomically, and blend.json is removed first and
written last, so an interrupted blend leaves complete files and no blend.json: never a half-written one,
nor a record that describes other files. `read_blend(name)` reads it back for other features.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.config import Config, ConfigError, parameter_names
from helpers.dataset import data_dir_of
from helpers.errors import MissingFileError, exits_on_kit_error
from helpers.fusion import METHODS, Combiner, combiner_from_dict, correlations, fit_method, nested_predictions
from helpers.holdout import sample_submission, test_labels
from helpers.inference import fill_submission, probabilities_frame
from helpers.paths import blends_dir, runs_dir
from helpers.reports import oof_frame
from helpers.run_folder import BlendFolder, BlendMember, RunFolder
from helpers.tables import detect_layout, list_test_images
from helpers.tasks import Task, task_for
from helpers.thresholds import TunedThresholds

DEFAULT_METHOD = "stack"  # best test score in every run set measured: benchmarks/RESULTS.md, section 12
NOTES = {
    "oof": "out-of-fold: chosen and scored on the same rows (optimistic)",
    "nested": "nested: chosen on the other folds' rows, scored on each held-out fold (the honest estimate)",
    "test": "test: the held-out test set, never seen by the choice",
}
WEIGHT_MEANING = {
    "weighted_mean": "the member's weight in the average of probabilities",
    "multinomial_stack": "the member's share of the meta-model's absolute coefficients (its influence)",
    "per_class_stack": "the member's share of the meta-model's absolute coefficients (its influence)",
}


class BlendRefused(ConfigError):
    """Runs that cannot be blended: each named with the reason."""


@dataclass
class Candidate:
    """One finished run as a blend member: its folder and config, the checkpoint kind and TTA views of its
    probabilities, its classes, its out-of-fold rows (id-indexed: fold, label, probabilities) and its test
    probabilities (id-indexed; None without a test set)."""

    run: RunFolder
    cfg: Config
    checkpoint: str
    tta_views: list[str]
    classes: list[str]
    oof: pd.DataFrame
    test: pd.DataFrame | None

    @property
    def name(self) -> str:
        return self.run.name

    def oof_probabilities(self, ids: Sequence[str]) -> np.ndarray:
        return self.oof.loc[list(ids), [f"prob_{c}" for c in self.classes]].to_numpy(dtype=float)


def load_candidate(run: RunFolder) -> Candidate:
    """The run as a blend member; BlendRefused saying what it lacks or why its files do not fit together."""
    if not run.config.exists():
        raise BlendRefused(f"{run.name}: no config.json (not a run)")
    if not (run.oof.exists() and run.evaluation.exists()):
        raise BlendRefused(f"{run.name}: no oof.csv or evaluation.json: run 04_evaluate for it first")
    cfg = run.read_config()
    evaluation = run.read_evaluation()
    checkpoint, views = evaluation["checkpoint"], list(evaluation["tta_views"])
    if cfg.ensemble_runs:
        raise BlendRefused(
            f"{run.name}: its test probabilities average other runs too (ensemble_runs={cfg.ensemble_runs}), "
            "its out-of-fold ones are its own: run 05 for it without ensemble_runs"
        )
    if cfg.calibrate:
        raise BlendRefused(
            f"{run.name}: its test probabilities are calibrated (calibrate=True) and its out-of-fold ones are "
            "not: run 05 for it with calibrate=False"
        )
    if checkpoint != cfg.checkpoint or views != list(cfg.tta_views):
        raise BlendRefused(
            f"{run.name}: 04 evaluated checkpoint={checkpoint!r}, tta_views={views} and its config.json (what "
            f"05 predicted with) says checkpoint={cfg.checkpoint!r}, tta_views={list(cfg.tta_views)}: run 04 "
            "and 05 with the same ones"
        )
    oof = run.read_oof()
    classes = [c.removeprefix("prob_") for c in oof.columns if c.startswith("prob_")]
    oof = oof.assign(label=oof["label"].fillna("")).set_index("id").sort_index()
    test = run.read_test_probabilities() if run.test_probabilities.exists() else None
    return Candidate(run, cfg, checkpoint, views, classes, oof, test)


def mismatch(reference: Candidate, other: Candidate) -> str:
    """Why `other` cannot be blended with `reference` (empty when it can): task, classes, out-of-fold
    images, folds, labels, test images."""
    if task_for(other.cfg).name != task_for(reference.cfg).name:
        return f"task {other.cfg.task}, and {reference.name} is {reference.cfg.task}"
    if other.classes != reference.classes:
        return f"classes {other.classes}, and {reference.name} has {reference.classes}"
    ours, theirs = set(reference.oof.index), set(other.oof.index)
    if ours != theirs:
        return (
            f"other out-of-fold images: {len(theirs - ours)} not in {reference.name}'s oof.csv, {len(ours - theirs)} "
            "of its missing (another data set, or other folds trained)"
        )
    moved = other.oof["fold"] != reference.oof.loc[other.oof.index, "fold"]
    if moved.any():
        first = moved[moved].index[0]
        return (
            f"other folds: {int(moved.sum())} image(s) in another fold than in {reference.name} (e.g. {first}: fold "
            f"{other.oof.loc[first, 'fold']} against {reference.oof.loc[first, 'fold']}; another seed or n_folds)"
        )
    relabelled = other.oof["label"] != reference.oof.loc[other.oof.index, "label"]
    if relabelled.any():
        return f"other labels for {int(relabelled.sum())} image(s), e.g. {relabelled[relabelled].index[0]}"
    if (reference.test is None) != (other.test is None):
        missing = other if other.test is None else reference
        return f"{missing.name} has no test_probabilities.csv: run 05_inference for it"
    if reference.test is not None and set(other.test.index) != set(reference.test.index):
        return f"other test images than {reference.name}"
    return ""


def finished_runs() -> list[RunFolder]:
    """The run folders where 04 wrote out-of-fold predictions, by name."""
    return [RunFolder(d) for d in sorted(runs_dir().glob("*")) if (d / "oof.csv").exists()]


def find_candidates(names: Sequence[str] = ()) -> tuple[list[Candidate], dict[str, str]]:
    """The members and the runs refused with their reasons. Named runs must all fit the first one (else
    BlendRefused lists every refusal); with no names, the largest group of compatible finished runs (ties:
    the group of the first run by name), the others refused with their reasons."""
    runs = [RunFolder.named(n) for n in names] if names else finished_runs()
    loaded, refused = [], {}
    for run in runs:
        try:
            loaded.append(load_candidate(run))
        except BlendRefused as e:
            refused[run.name] = str(e).removeprefix(f"{run.name}: ")
    if names and refused:
        raise BlendRefused(_refusals(refused))
    groups = [[c for c in loaded if c is ref or not mismatch(ref, c)] for ref in loaded]
    members = (groups[0] if names else max(groups, key=len)) if groups else []
    for c in loaded:
        if c not in members:
            refused[c.name] = mismatch(members[0], c)
    if names and refused:
        raise BlendRefused(_refusals(refused))
    if len(members) < 2:
        where = ", ".join(names) if names else str(runs_dir())
        raise BlendRefused(
            f"a blend needs at least two compatible finished runs; found {len(members)} in {where}"
            + (f". Refused: {_refusals(refused)}" if refused else "")
        )
    return members, refused


def _refusals(refused: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in refused.items())


@dataclass
class BlendInputs:
    """The members' probabilities as arrays, rows aligned: out-of-fold (M, N, C) in the first member's id
    order with each row's fold and targets, and test (M, T, C) in the test set's order with its targets
    (None without a test set or labels)."""

    members: list[Candidate]
    task: Task
    classes: list[str]
    ids: list[str]
    folds: np.ndarray
    labels: list[str]
    targets: np.ndarray
    oof: np.ndarray
    test_rows: pd.DataFrame | None
    test: np.ndarray | None
    test_targets: np.ndarray | None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def cfg(self) -> Config:
        """The first member's config: what the data set, its test set and the submission's format follow."""
        return self.members[0].cfg


def blend_inputs(members: Sequence[Candidate]) -> BlendInputs:
    """The members' out-of-fold and test probabilities aligned row by row, with the targets."""
    first = members[0]
    cfg, task, classes = first.cfg, task_for(first.cfg), first.classes
    ids = list(first.oof.index)
    labels = first.oof["label"].astype(str).tolist()
    index = {c: i for i, c in enumerate(classes)}
    targets = task.encode_targets(
        [[index[t] for t in task.split(v, cfg.label_sep)] for v in labels], len(classes)
    )
    oof = np.stack([m.oof_probabilities(ids) for m in members])
    test_rows, test, truth = None, None, None
    if first.test is not None:
        data_dir = data_dir_of(cfg)
        listed = list_test_images(cfg, data_dir, detect_layout(cfg, data_dir))
        order = list(first.test.index) if listed is None else listed["id"].astype(str).tolist()
        test_rows = listed if listed is not None else pd.DataFrame({"id": order})
        test = np.stack([m.test.loc[order, classes].to_numpy(dtype=float) for m in members])
        truth = test_labels(cfg, data_dir, test_rows, classes) if listed is not None else None
    folds = first.oof["fold"].to_numpy()
    return BlendInputs(list(members), task, classes, ids, folds, labels, targets, oof, test_rows, test, truth)


@dataclass
class BlendResult:
    """One method fitted on every out-of-fold row: its combiner, the blend's out-of-fold, nested and test
    probabilities, the thresholds tuned on its out-of-fold probabilities (multilabel) and the three
    figures (`NOTES`)."""

    method: str
    inputs: BlendInputs
    combiner: Combiner
    oof: np.ndarray
    nested: np.ndarray | None
    test: np.ndarray | None
    thresholds: TunedThresholds | None
    scores: dict[str, dict[str, float] | None]

    @property
    def held_out(self) -> np.ndarray:
        """The blend's predictions of rows it was not chosen on (the nested ones; with one fold, the
        out-of-fold ones): what its oof.csv holds and its thresholds are tuned on, as a run's oof.csv holds
        predictions of rows its model did not train on."""
        return self.oof if self.nested is None else self.nested

    @property
    def weights(self) -> pd.Series:
        """Each member's weight (a stack's: its share of the absolute coefficients), by run name."""
        return pd.Series(self.combiner.influence, index=self.inputs.names, name=self.method)


def fit_blend(inputs: BlendInputs, method: str) -> BlendResult:
    """The method chosen on every out-of-fold row, its nested estimate and its test score."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not a blend method; choose one of {list(METHODS)}")
    task = inputs.task
    objective, stacking = task.blend_objective, task.stacking
    combiner = fit_method(method, inputs.oof, inputs.targets, objective, stacking)
    oof = combiner.combine(inputs.oof)
    nested = nested_predictions(method, inputs.oof, inputs.targets, inputs.folds, objective, stacking)
    kinds = sorted({m.checkpoint for m in inputs.members})
    views = sorted({v for m in inputs.members for v in m.tta_views})
    held_out = oof if nested is None else nested  # BlendResult.held_out
    thresholds = task.fit_thresholds(inputs.targets, held_out, inputs.classes, "+".join(kinds), views)
    test = None if inputs.test is None else combiner.combine(inputs.test)
    scores: dict[str, dict[str, float] | None] = {
        "oof": task.blend_scores(inputs.targets, oof),
        "nested": None if nested is None else task.blend_scores(inputs.targets, nested),
        "test": None,
    }
    if test is not None and inputs.test_targets is not None:
        scores["test"] = task.summary(inputs.test_targets, test, thresholds)
    return BlendResult(method, inputs, combiner, oof, nested, test, thresholds, scores)


def member_table(inputs: BlendInputs) -> pd.DataFrame:
    """Each member's backbone, size, checkpoint and TTA views, then its out-of-fold and test figures (the
    task's view score and blending objective), one row per run."""
    rows = []
    task = inputs.task
    for m, member in enumerate(inputs.members):
        row = {
            "run": member.name,
            "backbone": member.cfg.backbone,
            "img_size": member.cfg.img_size,
            "checkpoint": member.checkpoint,
            "tta_views": "+".join(member.tta_views),
        }
        row |= {f"oof {k}": v for k, v in task.blend_scores(inputs.targets, inputs.oof[m]).items()}
        if inputs.test is not None and inputs.test_targets is not None:
            row |= {f"test {k}": v for k, v in task.blend_scores(inputs.test_targets, inputs.test[m]).items()}
        rows.append(row)
    return pd.DataFrame(rows)


def best_single(inputs: BlendInputs) -> int:
    """The member with the best out-of-fold view score (what one would submit without blending)."""
    task = inputs.task
    return int(np.argmax([task.view_score(inputs.targets, p) for p in inputs.oof]))


def compare_methods(
    inputs: BlendInputs, methods: Sequence[str] = METHODS
) -> tuple[pd.DataFrame, dict[str, BlendResult]]:
    """Every method fitted, and one table: the best single run (by out-of-fold score) and each method, with
    their out-of-fold, nested and test figures, each column named by which figure it is."""
    results = {method: fit_blend(inputs, method) for method in methods}
    task = inputs.task
    best = best_single(inputs)
    single = task.blend_scores(inputs.targets, inputs.oof[best])
    rows = [{"blend": f"best single run ({inputs.names[best]})"} | {f"oof {k}": v for k, v in single.items()}]
    rows[0] |= {f"nested {k}": v for k, v in single.items()}  # one run chooses nothing but itself
    if inputs.test is not None and inputs.test_targets is not None:
        rows[0] |= {
            f"test {k}": v for k, v in task.blend_scores(inputs.test_targets, inputs.test[best]).items()
        }
    for method, result in results.items():
        row: dict[str, Any] = {"blend": method}
        for figure in ("oof", "nested"):
            row |= {f"{figure} {k}": v for k, v in (result.scores[figure] or {}).items()}
        if result.test is not None and inputs.test_targets is not None:
            row |= {f"test {k}": v for k, v in task.blend_scores(inputs.test_targets, result.test).items()}
        rows.append(row)
    return pd.DataFrame(rows).set_index("blend"), results


def blend_record(result: BlendResult, name: str) -> dict[str, Any]:
    """blend.json's contents."""
    inputs = result.inputs
    return {
        "name": name,
        "method": result.method,
        "task": inputs.task.name,
        "classes": inputs.classes,
        "label_sep": inputs.cfg.label_sep,
        "members": [
            {"run": m.name, "checkpoint": m.checkpoint, "tta_views": m.tta_views, "weight": float(w)}
            for m, w in zip(inputs.members, result.combiner.influence, strict=True)
        ],
        "weight_meaning": WEIGHT_MEANING[result.combiner.kind],
        "combiner": result.combiner.to_dict(),
        "objective": inputs.task.blend_objective_name,
        "scores": result.scores,
        "notes": NOTES,
        "images": {"oof": len(inputs.ids), "test": 0 if inputs.test is None else inputs.test.shape[1]},
        "folds": sorted(int(f) for f in np.unique(inputs.folds)),
        "data_dir": str(data_dir_of(inputs.cfg)),
        "written_at": datetime.now().isoformat(timespec="seconds"),
    }


def blend_folder(name: str, method: str) -> BlendFolder:
    """outputs/blends/<name>, by default blend_<method>."""
    return BlendFolder.named(name or f"blend_{method}")


def write_blend(result: BlendResult, name: str = "") -> BlendFolder:
    """The blend's folder (outputs/blends/<name>, by default blend_<method>): oof.csv (the held-out
    predictions), thresholds.json (multilabel), test_probabilities.csv and submission.csv, then blend.json. The old blend.json goes first,
    so an interrupted write leaves no record of files it did not finish."""
    inputs, task = result.inputs, result.inputs.task
    folder = blend_folder(name, result.method)
    folder.clear_record()
    cfg = inputs.cfg
    held_out = result.held_out
    predicted = task.label_texts(task.decide(held_out, result.thresholds), inputs.classes, cfg.label_sep)
    folder.write_oof(oof_frame(inputs.ids, inputs.folds, inputs.labels, predicted, held_out, inputs.classes))
    if result.thresholds is not None:
        folder.write_thresholds(result.thresholds.to_dict())
    if result.test is not None and inputs.test_rows is not None:
        ids = inputs.test_rows["id"].astype(str).tolist()
        folder.write_test_probabilities(probabilities_frame(ids, result.test, inputs.classes))
        data_dir = data_dir_of(cfg)
        sample = sample_submission(
            cfg, data_dir, detect_layout(cfg, data_dir), inputs.test_rows, inputs.classes
        )
        decided = task.decide(result.test, result.thresholds)
        folder.write_submission(
            fill_submission(
                task, sample, cfg.id_col, ids, result.test, decided, inputs.classes, cfg.label_sep
            )
        )
    folder.write_record(blend_record(result, folder.name))
    return folder


@dataclass(frozen=True)
class BlendRecord:
    """A written blend (blend.json): name, method, task, classes, members, the combiner and the scores."""

    name: str
    method: str
    task: str
    classes: list[str]
    members: list[BlendMember]
    combiner: Combiner
    scores: dict[str, dict[str, float] | None]
    record: dict[str, Any]

    def combine(self, member_probabilities: Sequence[np.ndarray]) -> np.ndarray:
        """The blend's probabilities (N, C) from each member's (N, C), in `members` order."""
        return self.combiner.combine(np.stack(member_probabilities))


def read_blend(name: str) -> BlendRecord:
    """The blend written as outputs/blends/<name>; MissingFileError when there is none (or its write was
    interrupted, which leaves no blend.json)."""
    folder = BlendFolder.named(name)
    if not folder.complete():
        raise MissingFileError(
            f"{folder.record} does not exist: no blend named {name!r} (an interrupted blend leaves none); "
            f"write it with python -m helpers.blend --name {name}"
        )
    record = folder.read_record()
    members = folder.read_members()
    return BlendRecord(
        record["name"], record["method"], record["task"], list(record["classes"]), members,
        combiner_from_dict(record["combiner"]), record["scores"], record,
    )  # fmt: skip


def written_blends() -> list[BlendFolder]:
    """Every complete blend folder, by name."""
    return [BlendFolder(d) for d in sorted(blends_dir().glob("*")) if (d / "blend.json").exists()]


# --- figures -------------------------------------------------------------------------------------------------


def show_correlations(inputs: BlendInputs) -> Figure:
    """The members' pairwise correlation of their out-of-fold probabilities, as a heat map."""
    matrix = correlations(inputs.oof)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * n + 3, 1.0 * n + 2))
    image = ax.imshow(matrix, vmin=min(0.0, matrix.min()), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), inputs.names, rotation=45, ha="right")
    ax.set_yticks(range(n), inputs.names)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if matrix[i, j] < 0.7 else "black",
            )
    ax.set_title("out-of-fold probabilities: pairwise correlation (lower: more to gain)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def show_weights(results: dict[str, BlendResult]) -> Figure:
    """Each method's member weights side by side (a stack's: its members' shares of its coefficients)."""
    weights = pd.DataFrame({method: r.weights for method, r in results.items()})
    ax = weights.plot.barh(figsize=(8, 0.6 * len(weights) + 2))
    ax.set(xlabel="weight (stack: share of the absolute coefficients)", title="members' weights by method")
    ax.invert_yaxis()
    fig = ax.get_figure()
    fig.tight_layout()
    return fig


def show_comparison(table: pd.DataFrame, metric: str) -> Figure:
    """The best single run and each method: out-of-fold, nested and test figures of one metric."""
    columns = [c for c in (f"oof {metric}", f"nested {metric}", f"test {metric}") if c in table]
    ax = table[columns].plot.bar(figsize=(9, 4.5), rot=0)
    ax.set(ylabel=metric, title=f"{metric}: out-of-fold (optimistic), nested and test")
    values = table[columns].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size:
        span = max(finite.max() - finite.min(), 0.01)
        ax.set_ylim(finite.min() - span, finite.max() + span / 2)
    ax.legend(loc="lower right")
    fig = ax.get_figure()
    fig.tight_layout()
    return fig


def check_blend_parameters(cell_sources: list[str], runs: list[str], method: str, name: str) -> None:
    """07's parameters: refuse a name its parameters cell does not declare (papermill only warns) and bad
    values."""
    own = parameter_names(cell_sources[:1])
    unknown = sorted(set(parameter_names(cell_sources)) - set(own))
    if unknown:
        raise ConfigError(f"parameter(s) {unknown} are not parameters of 07_blend; it takes {own}")
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise ConfigError(f"runs={runs!r} must be a list of run names, e.g. ['resnet18', 'convnext_tiny']")
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not a blend method; choose one of {list(METHODS)}")
    if not isinstance(name, str) or "/" in name:
        raise ConfigError(f"name={name!r} must be a folder name under outputs/blends (empty: blend_<method>)")


# --- command line --------------------------------------------------------------------------------------------


@exits_on_kit_error("python -m helpers.blend")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.blend",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs", default="", help="comma-separated run names (default: every compatible finished run)"
    )
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help=f"default {DEFAULT_METHOD}")
    parser.add_argument(
        "--name", default="", help="the blend's folder under outputs/blends (default blend_<method>)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    members, refused = find_candidates(names)
    for run, why in refused.items():
        print(f"left out {run}: {why}")
    inputs = blend_inputs(members)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(member_table(inputs).round(4).to_string(index=False), "\n")
        table, results = compare_methods(inputs)
        print(table.round(4).to_string(), "\n")
    print("\n".join(NOTES.values()))
    result = results[args.method]
    folder = write_blend(result, args.name)
    print(f"\n{args.method} weights: " + ", ".join(f"{n} {w:.3f}" for n, w in result.weights.items()))
    print(f"wrote {folder.path} (blend.json, oof.csv, test_probabilities.csv, submission.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
