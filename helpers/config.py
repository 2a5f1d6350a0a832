"""The one typed settings object of a run: defaults, validation, JSON round trip.

Papermill neither type-checks its `-p` values nor rejects unknown names, so every value a notebook receives
goes through `Config.from_dict`, which names the setting at fault and what it accepts.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from helpers.atomic import atomic_write_text
from helpers.errors import KitError, MissingRunError

Layout = Literal["auto", "csv", "imagefolder"]
Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["onecycle", "cosine", "warmup_cosine", "cosine_restarts", "plateau", "none"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]
Preset = Literal["none", "light", "medium", "heavy"]
Monitor = Literal["auto", "val_acc", "val_map", "val_loss"]
CheckpointKind = Literal["best_score", "best_loss", "last", "ema"]
TaskSetting = Literal["auto", "multiclass", "multilabel"]
Loss = Literal["default", "focal", "asl"]
ClassWeights = Literal["none", "balanced"]
Sampler = Literal["shuffle", "balanced"]
# Which step of the series owns a setting. "data" settings are fixed by 01_data and "train" settings by
# 03_train (once a fold has trained): they define what a run trained on and how. The others never change
# what was trained: "run" names the run, "predict" chooses how 04 and 05 predict, "machine" how fast.
Stage = Literal["run", "data", "train", "predict", "machine"]
FIXED_STAGES = ("data", "train")
# a value that asks the kit to choose; the choice is saved, and asking again never contradicts it
AUTOMATIC = {"img_size": 0, "crop_pct": 0.0, "task": "auto", "monitor": "auto"}


class ConfigError(KitError, ValueError):
    """A setting is unknown, of the wrong type or impossible; the message names it and how to fix it."""


def setting(default: Any, stage: Stage, *, resumable: bool = False) -> Any:
    """A Config field with its stage; `resumable` marks a data or train setting that a fold may change
    between a run and its resumption (the other stages' settings always may)."""
    metadata = {"stage": stage, "resumable": resumable or stage not in FIXED_STAGES}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    """Every setting of a run, with its default. Field comments are the user-facing documentation."""

    # --- run and data -----------------------------------------------------------------------------
    run_name: str = setting("", "run")  # folder under outputs/runs; empty: the backbone's name
    data_dir: str = setting("", "data")  # empty: the embedded digits demo set
    dataset_name: str = setting("", "data")  # folder under outputs/datasets; empty: data_dir's folder name
    # csv (table + image folder), imagefolder (train/<class>/*), or auto-detect
    layout: Layout = setting("auto", "data")
    csv_name: str = setting("train.csv", "data")  # the label table, relative to data_dir
    csv_sep: str = setting(",", "data")  # the label table's column separator, e.g. ";" or a tab
    id_col: str = setting("id", "data")  # image id column; the file is <image_dir>/<id><image_ext>
    label_col: str = setting("label", "data")  # class column: ints or strings
    # multiclass: one label per image; multilabel: a set per image; auto: multiclass, and a stop naming
    # task and label_sep when the labels look like sets. The run's config.json holds the resolved task.
    task: TaskSetting = setting("auto", "data")
    label_sep: str = setting(" ", "data")  # multilabel: what separates the labels within label_col
    # one 0/1 column per class instead of label_col (exactly one 1 per row: a multiclass task in wide form)
    label_cols: list[str] = setting([], "data")
    allow_empty_labels: bool = setting(False, "data")  # multilabel: a row with no label is a valid example
    # optional: rows sharing a group stay in one fold (StratifiedGroupKFold)
    group_col: str = setting("", "data")
    # optional: a column of image paths relative to image_dir, instead of id + ext
    path_col: str = setting("", "data")
    image_dir: str = setting("train_image", "data")  # image folder, relative to data_dir
    image_ext: str = setting(".jpg", "data")  # appended to the id to name its file
    test_dir: str = setting("test_image", "predict")  # test images, relative to data_dir
    sample_submission: str = setting("sample_submission.csv", "predict")  # test ids and submission columns
    # optional: the given split, fold numbers 0..K-1 (K = n_folds) or train/valid (one fixed split)
    split_col: str = setting("", "data")
    val_csv: str = setting("", "data")  # optional: a validation table like csv_name: one fixed split
    # optional: test ids (+ labels in label_col) in test_dir, instead of the sample submission
    test_csv: str = setting("", "predict")
    # False: stop on bad rows and list them; True: drop and record them
    drop_bad_rows: bool = setting(False, "data", resumable=True)
    n_folds: int = setting(5, "data")  # K of stratified K-fold (a given fixed split has one part)
    seed: int = setting(42, "data")  # folds, initialisation, augmentation and loader order
    # pseudo-labels (helpers.pseudo_labels): a run or blend (07) whose test probabilities label the test
    # images, or whose fold models label unlabelled_dir; the chosen images join every fold's training side,
    # never a validation fold. Empty: none
    pseudo_source: str = setting("", "data")
    # keep an image when the source is at least this sure (multiclass: its top probability; multilabel:
    # every class's probability at least this far from undecided, p >= t or p <= 1 - t)
    pseudo_threshold: float = setting(0.8, "data")
    pseudo_soft: bool = setting(False, "data")  # train on the source's probabilities instead of hard labels
    # optional: a folder of unlabelled images (absolute, or relative to the project root) to pseudo-label
    # instead of the test images; the source's fold models predict them
    unlabelled_dir: str = setting("", "data")
    # --- model ------------------------------------------------------------------------------------
    backbone: str = setting("resnet18", "train")  # any timm model name
    # square input side; 0: the backbone's (pretrained) size, or the data's median side if smaller
    img_size: int = setting(0, "train")
    # validation and prediction: resize to img_size / crop_pct, centre crop img_size (timm's eval crop);
    # 0: the backbone's pretrained crop when starting from pretrained weights, else 1 (no crop)
    crop_pct: float = setting(0.0, "train")
    # start from the backbone's pretrained weights: the Hugging Face cache, else downloaded into it
    # (helpers.weights); False trains from scratch
    pretrained: bool = setting(True, "train")
    # local .pth / .safetensors of pretrained weights (timm's or EfficientNet-PyTorch's layout); loaded
    # whenever given
    weights_file: str = setting("", "train")
    channels_last: bool = setting(True, "train")  # memory format for conv nets
    compile: bool = setting(False, "train")  # torch.compile the model (benchmarks/RESULTS.md: when it pays)
    # --- distillation (helpers.distill) -----------------------------------------------------------
    # runs (or blends of runs, at their weights) of the same data set, classes and folds whose fold-k models
    # teach this run's fold k (run live on each training batch); empty: no distillation
    teachers: list[str] = setting([], "train")
    distill_temperature: float = setting(4.0, "train")  # softens the teachers' and student's outputs
    # the loss is (1 - w) x the labels' loss + w x the distillation loss (timm's LogitDistillationTask)
    distill_weight: float = setting(0.9, "train")
    # --- training ---------------------------------------------------------------------------------
    folds: list[int] = setting([0], "train", resumable=True)  # folds to train; [] means all
    epochs: int = setting(5, "train")
    batch_size: int = setting(64, "train")  # per optimizer step is batch_size * grad_accum
    lr: float = setting(3e-3, "train")  # peak learning rate
    weight_decay: float = setting(0.05, "train")
    # fine-tuning: off by default, pretrained or not: on real ImageNet weights neither beat training every
    # layer at lr 3e-3 (benchmarks/RESULTS.md, "Fine-tuning pretrained weights")
    # first epochs train the head alone (body and its BN stats frozen)
    freeze_epochs: int = setting(0, "train")
    layer_decay: float = setting(1.0, "train")  # timm's layer-wise lr decay per layer below the head; 1: off
    optimizer: Optimizer = setting("adamw", "train")
    scheduler: Scheduler = setting("onecycle", "train")
    # linear warmup for warmup_cosine (onecycle has its own ramp)
    warmup_epochs: float = setting(0.0, "train")
    label_smoothing: float = setting(0.1, "train")
    # default: cross-entropy (multiclass) or BCE with logits (multilabel); focal: multiclass focal loss;
    # asl: timm's asymmetric loss (multilabel)
    loss: Loss = setting("default", "train")
    focal_gamma: float = setting(2.0, "train")  # focusing exponent of the focal loss
    # balanced, counted on each fold's training rows; its meaning follows the task. multiclass: a weight
    # n / (C * count) per class in the cross-entropy or focal loss (scikit-learn's compute_class_weight);
    # multilabel: pos_weight = negatives / positives per class in the BCE or asl
    class_weights: ClassWeights = setting("none", "train")
    # balanced: each epoch draws as many rows as the fold has, with replacement, with probability inverse
    # to the row's class frequency (multilabel: its rarest class); seeded per epoch, so resumable
    sampler: Sampler = setting("shuffle", "train")
    augment: Preset = setting("light", "train")  # training augmentation preset
    precision: PrecisionSetting = setting("auto", "train")  # auto: bf16 (or fp16) on CUDA, fp32 on CPU
    grad_accum: int = setting(1, "train")  # micro-batches per optimizer step
    clip_grad: float = setting(0.0, "train")  # max gradient norm; 0 disables clipping
    # several GPUs (helpers.distributed): batch-norm statistics over all GPUs' batches
    sync_bn: bool = setting(False, "train")
    ema: bool = setting(False, "train")  # keep an exponential moving average of the weights
    ema_decay: float = setting(0.998, "train")
    mixup: float = setting(0.0, "train")  # mixup alpha; 0 disables
    cutmix: float = setting(0.0, "train")  # cutmix alpha; 0 disables
    # metric that picks best_score and drives early stopping; auto: val_acc (multiclass), val_map (multilabel)
    monitor: Monitor = setting("auto", "train")
    patience: int = setting(0, "train")  # epochs without improvement before stopping; 0 disables
    num_workers: int = setting(-1, "machine")  # loader processes; -1: a choice for this machine's cores
    # decode each image once, at the size training reads, into the dataset's store on disk (helpers.store);
    # False: decode the files in every epoch
    store: bool = setting(True, "machine")
    resume: bool = setting(True, "machine")  # continue from fold<k>_last when it exists
    # "machine", not "train": the range test runs on a copy and leaves the training it precedes unchanged
    lr_finder: bool = setting(False, "machine")  # 03: a learning-rate range test before training
    # --- evaluation and inference -----------------------------------------------------------------
    checkpoint: CheckpointKind = setting("best_score", "predict")  # which checkpoint 04 and 05 use
    tta_views: list[str] = setting(["identity"], "predict")  # see helpers.tta.VIEWS
    ensemble_runs: list[str] = setting([], "predict")  # more runs to ensemble in 05
    calibrate: bool = setting(False, "predict")  # 05: scale test probabilities by the temperature 04 fitted
    export_onnx: bool = setting(False, "predict")  # 05: export each fold model to ONNX and check it

    # ------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._check_values()

    @classmethod
    def names(cls) -> list[str]:
        """The setting names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def stage_of(cls, name: str) -> Stage:
        """The step of the series that owns the setting (see Stage)."""
        return cls.__dataclass_fields__[name].metadata["stage"]

    @classmethod
    def names_of(cls, *stages: Stage) -> list[str]:
        """The settings of these stages, in declaration order."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata["stage"] in stages]

    @classmethod
    def resumable(cls) -> set[str]:
        """The settings a fold may change between a run and its resumption without changing what it trains."""
        return {f.name for f in dataclasses.fields(cls) if f.metadata["resumable"]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build a config from plain values, rejecting unknown names and values of the wrong type."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {unknown}. Known settings: {', '.join(known)}. "
                "Check the spelling of the -p name."
            )
        return cls(**values)

    def uses_pretrained_weights(self) -> bool:
        """Whether the model starts from pretrained weights: `pretrained`, or a `weights_file` (always loaded)."""
        return self.pretrained or bool(self.weights_file)

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed, validated like any other."""
        return Config.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the settings as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Config:
        """Read a run's config.json; a setting this version no longer knows is an error."""
        if not path.exists():
            raise MissingRunError(f"{path} does not exist: run the notebook that writes it first")
        return cls.from_dict(json.loads(path.read_text()))

    # ------------------------------------------------------------------------------------------------
    def _check_values(self) -> None:
        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {message}")

        need(self.n_folds >= 2, "n_folds", "must be at least 2")
        need(
            all(0 <= k < self.n_folds for k in self.folds),
            "folds",
            f"every fold must be in 0..{self.n_folds - 1} (n_folds={self.n_folds}); [] trains all",
        )
        need(len(set(self.folds)) == len(self.folds), "folds", "a fold is listed twice")
        need(self.epochs >= 1, "epochs", "must be at least 1")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(self.img_size == 0 or self.img_size >= 8, "img_size", "must be 0 (automatic) or at least 8")
        need(0 <= self.crop_pct <= 1, "crop_pct", "must be 0 (automatic) or in (0, 1], e.g. 0.875")
        need(self.lr > 0, "lr", "must be positive")
        need(self.weight_decay >= 0, "weight_decay", "must be 0 or more")
        need(self.freeze_epochs >= 0, "freeze_epochs", "must be 0 (off) or more")
        need(0 < self.layer_decay <= 1, "layer_decay", "must be 1 (off) or in (0, 1), e.g. 0.75")
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be 0 or more")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(self.grad_accum >= 1, "grad_accum", "must be at least 1")
        need(self.clip_grad >= 0, "clip_grad", "must be 0 (off) or positive")
        need(0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1)")
        need(self.mixup >= 0, "mixup", "must be 0 (off) or a positive alpha")
        need(self.cutmix >= 0, "cutmix", "must be 0 (off) or a positive alpha")
        need(self.patience >= 0, "patience", "must be 0 (off) or positive")
        need(
            not (self.mixup or self.cutmix) or self.batch_size % 2 == 0,
            "batch_size",
            "must be even when mixup or cutmix is on (they pair images within a batch)",
        )
        need(self.distill_temperature > 0, "distill_temperature", "must be positive, e.g. 2.0")
        need(0 <= self.distill_weight <= 1, "distill_weight", "must be in [0, 1]: 0 ignores the teachers")
        need(len(set(self.teachers)) == len(self.teachers), "teachers", "a run is listed twice")
        need(0.5 <= self.pseudo_threshold <= 1, "pseudo_threshold", "must be in [0.5, 1], e.g. 0.8")
        need(
            not self.unlabelled_dir or bool(self.pseudo_source),
            "unlabelled_dir",
            "needs pseudo_source: the run whose models label these images",
        )
        need(self.num_workers >= -1, "num_workers", "must be -1 (automatic) or 0 or more")
        need(bool(self.backbone), "backbone", "must name a timm model, e.g. resnet18")
        need(
            not self.image_ext or self.image_ext.startswith("."),
            "image_ext",
            "must start with a dot, e.g. .jpg",
        )
        need(len(self.csv_sep) == 1, "csv_sep", "must be one character, e.g. ';'")
        need(not (self.split_col and self.val_csv), "val_csv", "give the split once: split_col or val_csv")
        need(bool(self.tta_views), "tta_views", "name at least one view, e.g. ['identity']")
        need(len(self.label_sep) >= 1, "label_sep", "must be the text between labels, e.g. ' ', ',' or '|'")
        need(len(set(self.label_cols)) == len(self.label_cols), "label_cols", "a column is listed twice")
        need(self.focal_gamma >= 0, "focal_gamma", "must be 0 or more (0: plain cross-entropy)")
        need(
            not (self.loss == "focal" and self.task == "multilabel"),
            "loss",
            "focal is for multiclass tasks; a multilabel task takes 'default' (BCE) or 'asl'",
        )
        need(
            not (self.calibrate and self.task == "multilabel"),
            "calibrate",
            "temperature scaling is for multiclass runs (one softmax over the classes); a multilabel run "
            "predicts through its tuned thresholds: set calibrate=False",
        )
        need(
            not (self.loss == "asl" and self.task == "multiclass"),
            "loss",
            "asl is for multilabel tasks; a multiclass task takes 'default' (cross-entropy) or 'focal'",
        )
        if self.layout == "csv" or self.layout == "auto":
            need(bool(self.id_col or self.path_col), "id_col", "set id_col or path_col")
            need(
                bool(self.label_col or self.label_cols),
                "label_col",
                "must name the label column (or set label_cols to one 0/1 column per class)",
            )


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check one value against its declared type; accept the lossless conversions papermill needs."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ConfigError(f"{name}={value!r} must be True or False")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{name}={value!r} must be a whole number")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}={value!r} must be a number")
    if hint is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise ConfigError(f"{name}={value!r} must be text (papermill: pass it with -r {name} VALUE)")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ConfigError(f"{name}={value!r} is not a valid list, e.g. [0, 1]") from None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(f"{name}[{i}]", _parse_item(v, item), item) for i, v in enumerate(value)]
    raise TypeError(f"unsupported config type for {name}: {hint}")


def _parse_item(value: Any, item: type) -> Any:
    if item is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


# -- notebooks ------------------------------------------------------------------------------------------
PARAMETER_MARKER = "# parameters"  # first line of the parameters cell; papermill's own cell starts so too
INJECTED_MARKER = "# Parameters"  # papermill's injected cell, exactly; the notebook's own is lower-case


def parameter_names(cell_sources: list[str]) -> list[str]:
    """Names assigned in parameter cells: the notebook's own and the one papermill injects after it."""
    names: list[str] = []
    for source in cell_sources:
        if not source.lstrip().lower().startswith(PARAMETER_MARKER):
            continue
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign):
                names += [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.append(node.target.id)
    return list(dict.fromkeys(names))


def passed_values(
    namespace: dict[str, Any], cell_sources: list[str], owned: Collection[str] | None = None
) -> dict[str, Any]:
    """The settings that executed parameter cells pass, with their values from the namespace.

    Every name papermill injected is passed. A name of the notebook's own cell is passed when the notebook
    owns the setting (`owned`; None: all), or when its value differs from the default: a later notebook's
    `backbone = "resnet18"` only names the run by default, and must not override what the run trained.
    Unknown names are errors here, where papermill itself only warns.
    """
    injected = parameter_names([c for c in cell_sources if c.lstrip().startswith(INJECTED_MARKER)])
    values = {n: namespace[n] for n in parameter_names(cell_sources) if n in namespace}
    Config.from_dict(values)  # names and types checked before anything is compared
    defaults = Config().to_dict()
    return {
        n: v
        for n, v in values.items()
        if owned is None
        or n in owned
        or n in injected
        or Config.from_dict({n: v}).to_dict()[n] != defaults[n]
    }


def config_from_cells(
    namespace: dict[str, Any], cell_sources: list[str], base: Config | None = None
) -> Config:
    """The config that executed parameter cells describe, with values from the namespace, on top of `base`."""
    values = passed_values(namespace, cell_sources)
    return Config.from_dict({**(base.to_dict() if base else {}), **values})


def settle_run_config(passed: dict[str, Any], saved: Config, fixed: Collection[Stage], run: Path) -> Config:
    """The saved config of the run in folder `run` with the passed settings on top.

    A passed value of a fixed stage's setting that differs from the saved one is an error naming both
    values: those settings define what the run trained on and how, and a second value would silently
    describe a model that was never trained. Asking again for an AUTOMATIC value keeps the saved choice.
    """
    checked = Config.from_dict(passed).to_dict()
    kept = {
        n: v
        for n, v in checked.items()
        if n in passed and not (Config.stage_of(n) in fixed and AUTOMATIC.get(n) == v)
    }
    merged = Config.from_dict({**saved.to_dict(), **kept})
    conflicts = [n for n in kept if Config.stage_of(n) in fixed and getattr(merged, n) != getattr(saved, n)]
    if conflicts:
        listed = "; ".join(
            f"{n}={getattr(merged, n)!r} (the run has {getattr(saved, n)!r})" for n in conflicts
        )
        raise ConfigError(
            f"{listed}: run {run.name!r} was made with the values in {run / 'config.json'}, and these "
            f"parameters contradict them. Leave them out to use the run's values, or start a new run: set "
            f"run_name to a new name and run 01_data and 03_train for it (python -m helpers.runner -p run_name NEW ...)."
        )
    return merged
