"""A tuning study's search space: per training setting a range (on a log scale or not) or a list of choices.

A YAML or TOML file, or the same mapping as a dict in a notebook cell:

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # a float setting: any value in the range
    weight_decay: {low: 0.0, high: 0.1}
    freeze_epochs: {low: 0, high: 2}              # a whole-number setting: whole numbers
    batch_size: {choices: [32, 64]}
    scheduler: [onecycle, cosine]                 # a plain list: the choices
    augment: {choices: [light, medium]}

Only training settings can be searched, and not those the study fixes for every trial (folds, the epochs
budget, the monitor): data settings define what every trial is compared on, and machine or prediction
settings do not change what a trial trains. Every problem (an unknown name, a fixed setting, a range whose
ends a run would refuse, low not below high, a log range from 0, an unknown key) is a ConfigError naming
the file and the entry, raised before any trial starts.
"""

from __future__ import annotations

import json
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from helpers.config import Config, ConfigError

# a study compares trials on the same folds, for the same number of epochs, by the same metric
FIXED_BY_STUDY = ("folds", "epochs", "monitor")
RANGE_KEYS = {"low", "high", "log", "step"}
# what `python -m helpers.tune` searches when no space is given: the optimiser's settings, which matter for
# any backbone and data set
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 3e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-4, "high": 0.1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "augment": {"choices": ["none", "light", "medium"]},
}


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a numeric range (`low`..`high`, both ends included) or `choices`."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    whole: bool = False  # an int setting: suggest whole numbers

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this setting."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.whole:
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name}: one of {list(self.choices)}"
        scale = ", log scale" if self.log else (f", step {self.step:g}" if self.step else "")
        return f"{self.name}: {self.low:g} to {self.high:g}{scale}"

    def spec(self) -> dict[str, Any]:
        """The entry as a file would write it (what a study stores, to compare with a joining worker's)."""
        if self.choices:
            return {"choices": list(self.choices)}
        entry: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            entry["log"] = True
        if self.step:
            entry["step"] = self.step
        return entry


SearchSpace = dict[str, Dimension]


def searchable() -> list[str]:
    """The settings a study may search: the training settings but those it fixes for every trial."""
    return [n for n in Config.names_of("train") if n not in FIXED_BY_STUDY]


def load_space(path: Path | str) -> SearchSpace:
    """The search space of a YAML (.yaml, .yml) or TOML (.toml) file."""
    path = Path(path)
    try:
        text = path.read_text()
        spec = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read the search space {path}: {e}") from None
    return parse_space(spec or {}, str(path))


def parse_space(spec: Any, source: str = "the search space") -> SearchSpace:
    """Check every entry of a search-space mapping; the first problem is a ConfigError naming the entry."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"{source}: a search space is a mapping of setting -> range or choices, "
            "e.g. lr: {low: 0.0001, high: 0.01, log: true}"
        )
    return {str(name): _dimension(str(name), entry, source) for name, entry in spec.items()}


def space_spec(space: SearchSpace) -> dict[str, Any]:
    """The space as plain values (JSON-safe), in the form parse_space reads."""
    return json.loads(json.dumps({name: d.spec() for name, d in space.items()}))


def _dimension(name: str, entry: Any, source: str) -> Dimension:
    where = f"{source}: {name}"
    if name not in Config.names():
        raise ConfigError(f"{where}: unknown setting. Settings a study can search: {', '.join(searchable())}")
    if name in FIXED_BY_STUDY or Config.stage_of(name) != "train":
        stage = Config.stage_of(name)
        why = (
            "the study fixes it for every trial, so trials are compared on the same folds, epochs and metric"
            if name in FIXED_BY_STUDY
            else f"it is a {stage} setting: " + _STAGE_REASON[stage]
        )
        raise ConfigError(f"{where}: cannot be searched: {why}. Give it with -p when the study starts.")
    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {entry!r} must be a range {{low: .., high: ..}} or {{choices: [..]}}")
    keys = set(entry)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{where}: give choices alone, or a range (low, high, log, step); not both")
        return _choices(name, entry["choices"], where)
    unknown = sorted(keys - RANGE_KEYS)
    if unknown or not {"low", "high"} <= keys:
        raise ConfigError(
            f"{where}: a range needs low and high (optional: log, step){f'; unknown key(s) {unknown}' if unknown else ''}"
        )
    return _range(name, entry, where)


_STAGE_REASON = {
    "data": "every trial of a study trains on the same data and folds",
    "run": "each trial's run is named after the study and its number",
    "predict": "it changes how 04 and 05 predict, not what a trial trains",
    "machine": "it changes how fast a trial trains, not what it trains",
}


def _choices(name: str, values: Any, where: str) -> Dimension:
    if not isinstance(values, list) or not values:
        raise ConfigError(
            f"{where}: choices must be a non-empty list, e.g. choices: [{Config().to_dict()[name]!r}]"
        )
    checked = []
    for value in values:
        if value is not None and not isinstance(value, bool | int | float | str):
            raise ConfigError(f"{where}: choice {value!r} must be a single value (text, number, true/false)")
        checked.append(_valid(name, value, where, "choice"))
    if len(set(map(repr, checked))) != len(checked):
        raise ConfigError(f"{where}: a choice is listed twice in {values}")
    return Dimension(name, choices=tuple(checked))


def _range(name: str, entry: dict[str, Any], where: str) -> Dimension:
    hint = typing.get_type_hints(Config)[name]
    if hint not in (int, float):
        allowed = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        among = f" among {list(allowed)}" if allowed else ""
        raise ConfigError(f"{where}: not a number: give choices{among}, not a range")
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}: {key} {value!r} must be a number")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log {log!r} must be true or false")
    whole = hint is int
    if whole and not all(float(v).is_integer() for v in (low, high, step or 1)):
        raise ConfigError(f"{where}: {name} is a whole number: low, high and step must be whole numbers")
    low, high = _valid(name, low, where, "low"), _valid(name, high, where, "high")
    if not low < high:
        raise ConfigError(f"{where}: low {low!r} must be below high {high!r} (one value: give it with -p)")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale range must start above 0 (low is {low!r})")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step {step!r} must be positive, and a log-scale range takes none")
    return Dimension(name, low, high, log, step, whole=whole)


def _valid(name: str, value: Any, where: str, what: str) -> Any:
    """The value as a run would take it; one a run would refuse is an error of the entry."""
    try:
        return Config().replace(**{name: value}).to_dict()[name]
    except ConfigError as e:
        raise ConfigError(f"{where}: {what} {value!r} is impossible for a run: {e}") from None
