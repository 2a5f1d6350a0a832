"""The run folder: where each file of a run lives, and how each is written and read back.

    outputs/runs/<run>/
      config.json              every setting of the run (Config); 01 and 03 write it, the rest read it
      split.json               the validation split the run used: kind, source, folds (helpers.folds.Split)
      metrics.csv              one row per fold and epoch (03): body_frozen, lr (head), lr_body (lowest), losses,
                               val_acc (multiclass) or val_map, val_f1_micro, val_f1_macro (multilabel), ema_val_*...
      checkpoints/fold<k>_<kind>.pt   best_score, best_loss, last (resumable), ema (03)
      oof.csv                  out-of-fold predictions: id, fold, label, predicted, prob_<class> (04)
      evaluation.json          04's summary, flat: see EVALUATION_KEYS
      label_issues.csv         likely label errors: id, given, suggested, score (lowest first) (04)
      calibration.json         the temperature fitted on the OOF probabilities, ECE before and after (04)
      thresholds.json          multilabel: 0.5, the global and the per-class thresholds tuned on OOF (04; 05)
      submission.csv           the sample submission filled in (05)
      test_probabilities.csv   id and one probability column per class (05)
      data_problems.csv        every problem of the data, when 01 stopped on them
      pseudo_labels.csv        the pseudo-labelled images training adds to every fold (01, pseudo_source):
                               id, path, label, label_idx, confidence, source, origin, prob_<class>
      dropped_rows.csv         the rows left out with drop_bad_rows=True
      finished.json            the parameters the runner's whole series ran with (a sweep skips the run)
      pruned.json              a tuning trial stopped by its pruner: fold, epoch, monitor and value (helpers.tune)
      onnx/fold<k>_<kind>.onnx        a fold model exported to ONNX (helpers.export)
      onnx/fold<k>_<kind>.json        its preprocessing, classes and the parity check against torch
      plots/<name>.png         every figure a notebook shows
      notebooks/NN_*.ipynb     the executed notebooks (helpers.runner)

A blend of runs (helpers.blend) has a folder of its own beside the runs, `BlendFolder`:

    outputs/blends/<blend>/
      blend.json               members (run, checkpoint kind, TTA views, weight), method, the combiner (weights,
                               or the meta-model's coefficients), and the out-of-fold, nested and test scores
      oof.csv                  as a run's (id, fold, label, predicted, prob_*): each fold blended by the method
                               chosen on the other folds (the nested predictions)
      test_probabilities.csv   id and one probability column per class
      submission.csv           the sample submission filled in from them
      thresholds.json          multilabel: thresholds tuned on the probabilities of the blend's oof.csv
      plots/<name>.png         the figures 07 shows

Every other module asks this one for a path or a file's contents, so a name is spelled once. Every file
is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.atomic import atomic_to_csv, atomic_write_text
from helpers.config import Config, ConfigError
from helpers.paths import blends_dir, runs_dir

CHECKPOINT_KINDS = ("best_score", "best_loss", "last", "ema")
# evaluation.json: what was evaluated, then each metric of the run's task without TTA as val_<metric> and
# with the run's TTA views as val_<metric>_tta. Multiclass (helpers.singlelabel_metrics.summary_metrics; "accuracy" is
# shortened to "acc", as in metrics.csv): val_acc, val_acc_tta, val_top3_accuracy, val_macro_f1_tta,
# val_log_loss, ... (val_rare_class_recall(_tta) when the evaluated classes are imbalanced). Multilabel
# (helpers.multilabel_metrics.multilabel_summary, F1 and the rest at 0.5, a row without any class over
# 0.5 given its most probable one unless the data allows empty sets): val_map, val_map_micro_tta,
# val_roc_auc, val_f1_samples, val_f1_micro_tta, val_f1_macro, val_subset_accuracy, val_hamming_loss_tta, ...; then the scores at the per-class thresholds tuned on the
# TTA probabilities, with TTA only: val_f1_micro_tuned_tta, ... (optimistic: tuned on the same rows)
EVALUATION_KEYS = ("task", "checkpoint", "tta_views", "folds", "images")


def require_fitted_for(file: Path, fitted: str, checkpoint: str, tta_views: list[str], cfg: Config) -> None:
    """Refuse what 04 fitted on one checkpoint and set of TTA views (a temperature, thresholds) for a
    prediction with others: those give other probabilities, which it was not fitted on."""
    if checkpoint != cfg.checkpoint or tta_views != list(cfg.tta_views):
        raise ConfigError(
            f"{file} was {fitted} on checkpoint={checkpoint!r}, tta_views={tta_views}, and this prediction uses "
            f"checkpoint={cfg.checkpoint!r}, tta_views={list(cfg.tta_views)}: run 04 with the same checkpoint "
            f"and tta_views first, or predict with the ones it was {fitted} on"
        )


def metric_key(metric: str, tta: bool) -> str:
    """The evaluation.json key of one of summary_metrics' metrics, without or with TTA."""
    return f"val_{'acc' if metric == 'accuracy' else metric}" + ("_tta" if tta else "")


@dataclass(frozen=True)
class RunFolder:
    """One run's folder under outputs/runs, and the files in it."""

    path: Path

    @classmethod
    def of(cls, cfg: Config) -> RunFolder:
        """outputs/runs/<run_name>, with run_name defaulting to the backbone's name."""
        return cls(runs_dir() / (cfg.run_name or cfg.backbone))

    @classmethod
    def named(cls, name: str) -> RunFolder:
        return cls(runs_dir() / name)

    @property
    def name(self) -> str:
        return self.path.name

    # -- where each file lives ----------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def oof(self) -> Path:
        return self.path / "oof.csv"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation.json"

    @property
    def label_issues(self) -> Path:
        return self.path / "label_issues.csv"

    @property
    def calibration(self) -> Path:
        return self.path / "calibration.json"

    @property
    def thresholds(self) -> Path:
        return self.path / "thresholds.json"

    @property
    def onnx(self) -> Path:
        return self.path / "onnx"

    def onnx_model(self, fold: int, kind: str) -> Path:
        return self.onnx / f"fold{fold}_{kind}.onnx"

    def onnx_description(self, fold: int, kind: str) -> Path:
        return self.onnx / f"fold{fold}_{kind}.json"

    @property
    def submission(self) -> Path:
        return self.path / "submission.csv"

    @property
    def test_probabilities(self) -> Path:
        return self.path / "test_probabilities.csv"

    @property
    def data_problems(self) -> Path:
        return self.path / "data_problems.csv"

    @property
    def pseudo_labels(self) -> Path:
        return self.path / "pseudo_labels.csv"

    @property
    def dropped_rows(self) -> Path:
        return self.path / "dropped_rows.csv"

    @property
    def finished(self) -> Path:
        return self.path / "finished.json"

    @property
    def pruned(self) -> Path:
        return self.path / "pruned.json"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def notebooks(self) -> Path:
        return self.path / "notebooks"

    def checkpoint(self, fold: int, kind: str) -> Path:
        if kind not in CHECKPOINT_KINDS:
            raise ConfigError(f"unknown checkpoint kind {kind!r}; choose one of {CHECKPOINT_KINDS}")
        return self.checkpoints / f"fold{fold}_{kind}.pt"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def complete(self, has_test_set: bool) -> bool:
        """Whether the run is finished, however its notebooks were run (runner, sweep or by hand): 05 wrote
        its submission, or, for data without a test set, 04 wrote its evaluation."""
        return (self.submission if has_test_set else self.evaluation).exists()

    def trained(self) -> bool:
        """Whether any fold has trained: from then on the run's training settings are fixed."""
        return self.metrics.exists() or any(self.checkpoints.glob("fold*_*.pt"))

    def trained_folds(self, kind: str, n_folds: int) -> dict[int, Path]:
        """The folds that have a checkpoint of this kind, with its path."""
        found = {k: self.checkpoint(k, kind) for k in range(n_folds)}
        return {k: p for k, p in found.items() if p.exists()}

    # -- config.json ----------------------------------------------------------------------------------
    def read_config(self) -> Config:
        return Config.load(self.config)

    def write_config(self, cfg: Config) -> None:
        cfg.save(self.config)

    # -- split.json -----------------------------------------------------------------------------------
    def write_split(self, split: dict[str, Any]) -> None:
        atomic_write_text(self.split, json.dumps(split, indent=2) + "\n")

    def read_split(self) -> dict[str, Any]:
        return json.loads(self.split.read_text())

    # -- metrics.csv ----------------------------------------------------------------------------------
    def read_metrics(self, fold: int | None = None) -> pd.DataFrame:
        """Every epoch's row (or one fold's); an empty frame before the first epoch."""
        history = pd.read_csv(self.metrics) if self.metrics.exists() else pd.DataFrame()
        return history if fold is None or history.empty else history[history["fold"] == fold]

    def record_metrics(self, row: dict[str, Any]) -> None:
        """Add an epoch's row, replacing that epoch and any later one of the fold (a replayed epoch)."""
        history = self.read_metrics()
        if not history.empty:
            history = history[~((history["fold"] == row["fold"]) & (history["epoch"] >= row["epoch"]))]
        atomic_to_csv(pd.concat([history, pd.DataFrame([row])], ignore_index=True), self.metrics)

    # -- 04 and 05 ------------------------------------------------------------------------------------
    def write_evaluation(self, evaluation: dict[str, Any]) -> None:
        atomic_write_text(self.evaluation, json.dumps(evaluation, indent=2) + "\n")

    def read_evaluation(self) -> dict[str, Any]:
        return json.loads(self.evaluation.read_text())

    def write_oof(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.oof)

    def read_oof(self) -> pd.DataFrame:
        return pd.read_csv(self.oof, dtype={"id": str, "label": str, "predicted": str})

    def write_label_issues(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.label_issues)

    def read_label_issues(self) -> pd.DataFrame:
        return pd.read_csv(self.label_issues, dtype={"id": str, "given": str, "suggested": str})

    def write_calibration(self, calibration: dict[str, Any]) -> None:
        atomic_write_text(self.calibration, json.dumps(calibration, indent=2) + "\n")

    def read_calibration(self) -> dict[str, Any]:
        return json.loads(self.calibration.read_text())

    def write_thresholds(self, thresholds: dict[str, Any]) -> None:
        atomic_write_text(self.thresholds, json.dumps(thresholds, indent=2) + "\n")

    def read_thresholds(self) -> dict[str, Any]:
        return json.loads(self.thresholds.read_text())

    def write_onnx_description(self, fold: int, kind: str, description: dict[str, Any]) -> None:
        atomic_write_text(self.onnx_description(fold, kind), json.dumps(description, indent=2) + "\n")

    def write_submission(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.submission)

    def write_test_probabilities(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.test_probabilities)

    def read_test_probabilities(self) -> pd.DataFrame:
        """The id-indexed probability columns 05 wrote."""
        return pd.read_csv(self.test_probabilities, dtype={"id": str}).set_index("id").astype(float)

    # -- pseudo_labels.csv ------------------------------------------------------------------------------
    def write_pseudo_labels(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.pseudo_labels)

    def read_pseudo_labels(self) -> pd.DataFrame:
        """The pseudo-labelled images, ids and label texts as text (an empty label set reads as "")."""
        text = {"id": str, "path": str, "label": str, "source": str, "origin": str}
        return pd.read_csv(self.pseudo_labels, dtype=text, keep_default_na=False)

    # -- data problems ----------------------------------------------------------------------------------
    def write_data_problems(self, problems: pd.DataFrame) -> None:
        atomic_to_csv(problems, self.data_problems)

    def write_dropped_rows(self, problems: pd.DataFrame) -> None:
        """The rows drop_bad_rows left out; no file when none were."""
        if problems.empty:
            self.dropped_rows.unlink(missing_ok=True)
        else:
            atomic_to_csv(problems, self.dropped_rows)

    # -- finished.json ---------------------------------------------------------------------------------
    def mark_finished(self, parameters: dict[str, Any]) -> None:
        marker = {"parameters": parameters, "finished_at": datetime.now().isoformat(timespec="seconds")}
        atomic_write_text(self.finished, json.dumps(marker, indent=2) + "\n")

    def clear_finished(self) -> None:
        self.finished.unlink(missing_ok=True)

    def finished_parameters(self) -> dict[str, Any] | None:
        """The parameters the whole series completed with, or None when it has not (yet) completed."""
        return json.loads(self.finished.read_text())["parameters"] if self.finished.exists() else None

    # -- pruned.json -----------------------------------------------------------------------------------
    def write_pruned(self, record: dict[str, Any]) -> None:
        """Record that a tuning trial's pruner stopped this run: `epoch` (as in metrics.csv) and fold, and
        the monitored value it was stopped on. Its checkpoints of that epoch are kept."""
        atomic_write_text(self.pruned, json.dumps(record, indent=2) + "\n")

    def pruned_at_epoch(self) -> int | None:
        """The epoch a tuning trial's pruner stopped this run at; None when it was not pruned."""
        return int(json.loads(self.pruned.read_text())["epoch"]) if self.pruned.exists() else None


@dataclass(frozen=True)
class BlendMember:
    """One member of a written blend: the run, the checkpoint kind and TTA views of its probabilities, and
    its weight (a stack's: its share of the meta-model's absolute coefficients)."""

    run: str
    checkpoint: str
    tta_views: list[str]
    weight: float


@dataclass(frozen=True)
class BlendFolder:
    """One blend's folder under outputs/blends, and the files in it. blend.json is written last and
    removed first when a blend is written again, so a folder without it is no blend (an interrupted
    write): every reader needs it."""

    path: Path

    @classmethod
    def named(cls, name: str) -> BlendFolder:
        return cls(blends_dir() / name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def record(self) -> Path:
        return self.path / "blend.json"

    @property
    def oof(self) -> Path:
        return self.path / "oof.csv"

    @property
    def test_probabilities(self) -> Path:
        return self.path / "test_probabilities.csv"

    @property
    def submission(self) -> Path:
        return self.path / "submission.csv"

    @property
    def thresholds(self) -> Path:
        return self.path / "thresholds.json"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    def complete(self) -> bool:
        """Whether the blend was written to the end (its blend.json exists)."""
        return self.record.exists()

    def clear_record(self) -> None:
        self.record.unlink(missing_ok=True)

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.record, json.dumps(record, indent=2) + "\n")

    def read_record(self) -> dict[str, Any]:
        return json.loads(self.record.read_text())

    def read_members(self) -> list[BlendMember]:
        """The members blend.json lists, in its order."""
        return [
            BlendMember(m["run"], m["checkpoint"], list(m["tta_views"]), float(m["weight"]))
            for m in self.read_record()["members"]
        ]

    def write_oof(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.oof)

    def read_oof(self) -> pd.DataFrame:
        return pd.read_csv(self.oof, dtype={"id": str, "label": str, "predicted": str})

    def write_test_probabilities(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.test_probabilities)

    def read_test_probabilities(self) -> pd.DataFrame:
        """The id-indexed probability columns of the blend."""
        return pd.read_csv(self.test_probabilities, dtype={"id": str}).set_index("id").astype(float)

    def write_submission(self, frame: pd.DataFrame) -> None:
        atomic_to_csv(frame, self.submission)

    def write_thresholds(self, thresholds: dict[str, Any]) -> None:
        atomic_write_text(self.thresholds, json.dumps(thresholds, indent=2) + "\n")

    def read_thresholds(self) -> dict[str, Any]:
        return json.loads(self.thresholds.read_text())
