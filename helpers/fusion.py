"""Blending members' probabilities, on plain arrays: equal weights, greedy ensemble selection, stacking.

Every function takes the members' out-of-fold probabilities as one array P of shape (M, N, C) (members,
rows, classes) and the rows' targets (class indices (N,), or multi-hot rows (N, C)). What a task scores
and how its stack is shaped come in as values (`objective`, `stacking`), so this module never asks which
task it serves; helpers.blend reads the run folders, checks that the members fit together and writes the
blend.

- `mean`: every member weighted equally, the baseline each other method is compared with.
- `greedy`: ensemble selection with replacement (Caruana et al. 2004): start from the best member, then
  repeatedly add the member (again, possibly) whose addition improves the objective most; stop when no
  addition improves it. The weights are the selection counts over their total.
- `stack`: a logistic-regression meta-model (scikit-learn) on the members' log-probabilities: one
  multinomial model over every member's classes (single-label), or one binary model per class over the
  members' logits of that class (multi-label). Its coefficients are kept as plain lists (JSON), never a
  pickle, and predictions are computed from them here, so a stored stack predicts exactly as a fitted one.

The honest figure (`nested_predictions`): for each fold, the method is chosen on the other folds' rows
only and applied to the held-out fold's rows; the held-out predictions together are scored once, as the
out-of-fold predictions of a single run are. For `mean`, which chooses nothing, it equals the plain
out-of-fold score; for the others the difference is how optimistic the plain figure is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression

METHODS = ("mean", "greedy", "stack")
Objective = Callable[[np.ndarray, np.ndarray], float]  # (targets, probabilities) -> score, higher is better
GREEDY_ROUNDS = 100  # the most additions greedy selection makes (it stops earlier when none helps)
STACK_C = 1.0  # the inverse L2 strength of the meta-model (scikit-learn's default)
FEATURE_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the log or logit of the features
ABSENT = -30.0  # the logit offset of a class the meta-model never saw a row of


def weighted_mean(P: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The members' probabilities (M, N, C) averaged with weights (M,) that sum to 1."""
    return np.tensordot(np.asarray(weights, dtype=float), P, axes=1)


class Combiner(ABC):
    """How the members' probabilities become the blend's: `combine` (M, N, C) -> (N, C); `influence` is
    each member's share (M,), summing to 1, for display; `to_dict` is what blend.json stores."""

    kind: ClassVar[str]

    @abstractmethod
    def combine(self, P: np.ndarray) -> np.ndarray: ...

    @property
    @abstractmethod
    def influence(self) -> np.ndarray: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class WeightedMean(Combiner):
    """A weighted average of the members' probabilities (`mean` and `greedy`)."""

    weights: np.ndarray
    kind: ClassVar[str] = "weighted_mean"

    def combine(self, P: np.ndarray) -> np.ndarray:
        return weighted_mean(P, self.weights)

    @property
    def influence(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": [float(w) for w in self.weights]}


def _shares(per_member: np.ndarray) -> np.ndarray:
    """Each member's share of a total (equal shares when the total is 0: a meta-model that ignores all)."""
    total = per_member.sum()
    return per_member / total if total > 0 else np.full(len(per_member), 1 / len(per_member))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, FEATURE_EPS, 1 - FEATURE_EPS)
    return np.log(p / (1 - p))


@dataclass
class MultinomialStack(Combiner):
    """Single-label stacking: softmax(coef @ x + intercept), x the members' log-probabilities side by side
    (M * C features, member-major)."""

    coef: np.ndarray  # (C, M * C)
    intercept: np.ndarray  # (C,)
    kind: ClassVar[str] = "multinomial_stack"

    @staticmethod
    def features(P: np.ndarray) -> np.ndarray:
        M, N, C = P.shape
        return np.log(np.clip(P, FEATURE_EPS, 1.0)).transpose(1, 0, 2).reshape(N, M * C)

    @classmethod
    def fit(cls, P: np.ndarray, targets: np.ndarray) -> MultinomialStack:
        M, _, C = P.shape
        coef, intercept = np.zeros((C, M * C)), np.full(C, ABSENT)
        present = np.unique(targets)
        if len(present) == 1:  # one class only: predict it
            intercept[present[0]] = 0.0
            return cls(coef, intercept)
        model = LogisticRegression(C=STACK_C, max_iter=2000).fit(cls.features(P), targets)
        if len(model.classes_) == 2:  # scikit-learn's binary form: one logit, the first class's at 0
            coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
            intercept[model.classes_[0]] = 0.0
        else:
            coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
        return cls(coef, intercept)

    def combine(self, P: np.ndarray) -> np.ndarray:
        return _softmax(self.features(P) @ self.coef.T + self.intercept)

    @property
    def influence(self) -> np.ndarray:
        C = len(self.intercept)
        return _shares(np.abs(self.coef).reshape(C, -1, C).sum(axis=(0, 2)))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}


@dataclass
class PerClassStack(Combiner):
    """Multi-label stacking: for each class c, sigmoid(coef[c] @ logits of the members' class-c
    probabilities + intercept[c])."""

    coef: np.ndarray  # (C, M)
    intercept: np.ndarray  # (C,)
    kind: ClassVar[str] = "per_class_stack"

    @classmethod
    def fit(cls, P: np.ndarray, targets: np.ndarray) -> PerClassStack:
        M, _, C = P.shape
        coef, intercept = np.zeros((C, M)), np.zeros(C)
        for c in range(C):
            y = targets[:, c]
            if y.min() == y.max():  # a class always or never present here: its rate, whatever the members say
                intercept[c] = float(_logit(np.array(y.mean())))
                continue
            model = LogisticRegression(C=STACK_C, max_iter=2000).fit(_logit(P[:, :, c]).T, y)
            coef[c], intercept[c] = model.coef_[0], model.intercept_[0]
        return cls(coef, intercept)

    def combine(self, P: np.ndarray) -> np.ndarray:
        return _sigmoid(np.einsum("cm,mnc->nc", self.coef, _logit(P)) + self.intercept)

    @property
    def influence(self) -> np.ndarray:
        return _shares(np.abs(self.coef).sum(0))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}


STACKS: dict[str, type[MultinomialStack] | type[PerClassStack]] = {
    "multinomial": MultinomialStack,
    "per_class": PerClassStack,
}
COMBINERS = {c.kind: c for c in (WeightedMean, MultinomialStack, PerClassStack)}


def combiner_from_dict(record: dict[str, Any]) -> Combiner:
    """A combiner from what `to_dict` wrote (blend.json)."""
    kind = COMBINERS[record["kind"]]
    if kind is WeightedMean:
        return WeightedMean(np.asarray(record["weights"], dtype=float))
    return kind(np.asarray(record["coef"], dtype=float), np.asarray(record["intercept"], dtype=float))


def greedy_weights(
    P: np.ndarray, targets: np.ndarray, objective: Objective, rounds: int = GREEDY_ROUNDS
) -> np.ndarray:
    """Ensemble selection with replacement: the best member first, then the addition that raises the
    objective most, until none raises it (a tie is no gain: a duplicate of a chosen member never joins).
    Returns the selection counts over their total (M,)."""
    M = len(P)
    alone = [objective(targets, P[m]) for m in range(M)]
    first = int(np.argmax(alone))
    counts = np.zeros(M)
    counts[first] = 1
    total, best = P[first].copy(), alone[first]
    for _ in range(rounds):
        k = counts.sum()
        scores = [objective(targets, (total + P[m]) / (k + 1)) for m in range(M)]
        m = int(np.argmax(scores))
        if not scores[m] > best:
            break
        counts[m] += 1
        total += P[m]
        best = scores[m]
    return counts / counts.sum()


def fit_method(
    method: str, P: np.ndarray, targets: np.ndarray, objective: Objective, stacking: str
) -> Combiner:
    """The combiner `method` chooses on these rows (M, N, C) and targets."""
    if method == "mean":
        return WeightedMean(np.full(len(P), 1 / len(P)))
    if method == "greedy":
        return WeightedMean(greedy_weights(P, targets, objective))
    if method == "stack":
        return STACKS[stacking].fit(P, targets)
    raise ValueError(f"unknown blend method {method!r}; choose one of {METHODS}")


def nested_predictions(
    method: str, P: np.ndarray, targets: np.ndarray, folds: np.ndarray, objective: Objective, stacking: str
) -> np.ndarray | None:
    """Each fold's rows blended by the method chosen on the other folds' rows alone (N, C); None with fewer
    than two folds (nothing to choose on)."""
    folds = np.asarray(folds)
    names = np.unique(folds)
    if len(names) < 2:
        return None
    out = np.zeros(P.shape[1:])
    for k in names:
        held = folds == k
        combiner = fit_method(method, P[:, ~held], targets[~held], objective, stacking)
        out[held] = combiner.combine(P[:, held])
    return out


def correlations(P: np.ndarray) -> np.ndarray:
    """The members' pairwise Pearson correlation (M, M) of their probabilities over every row and class:
    low correlation between good members is what blending buys."""
    flat = P.reshape(len(P), -1)
    return np.corrcoef(flat) if len(P) > 1 else np.ones((1, 1))
