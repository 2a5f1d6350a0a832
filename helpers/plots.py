"""Pictures the notebooks show, as small layered helpers: show_image -> image_grid -> show_images.

Every helper returns its figure; `save_figure` writes it under the run folder so what a person saw in
the notebook is also on disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve

from helpers.atomic import atomic_savefig
from helpers.run_folder import BlendFolder, RunFolder


def show_image(ax, image: np.ndarray, title: str = "", color: str = "black") -> None:
    """One HxWx3 uint8 image on an axis, without ticks."""
    ax.imshow(image)
    ax.set_title(title, fontsize=8, color=color)
    ax.axis("off")


TITLE_LINE = 0.17  # inches a line of an 8 pt image title takes, spacing included


def image_grid(n: int, ncols: int = 8, size: float = 1.4, title_lines: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure with n image axes in rows of ncols, each row tall enough for titles of `title_lines`
    lines (a three-line title otherwise runs into the row above); unused axes hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = nrows * (size + 0.08 + TITLE_LINE * title_lines)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, height), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def show_images(
    images: Sequence[np.ndarray],
    titles: Sequence[str] = (),
    ncols: int = 8,
    colors: Sequence[str] = (),
    suptitle: str = "",
) -> Figure:
    """A grid of images with optional per-image titles and title colours."""
    lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    fig, axes = image_grid(len(images), ncols, title_lines=lines)
    for i, (ax, image) in enumerate(zip(axes, images, strict=True)):
        show_image(ax, image, titles[i] if titles else "", colors[i] if colors else "black")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


MANY_CLASSES = 30  # above this, class plots switch to sorted counts and the most-confused classes


def show_class_counts(labels: pd.Series, classes: Sequence[str], named: int = 10) -> Figure:
    """Bar chart of images per class: in class-map order for a few classes; for many, sorted from the
    largest, on a log scale, with the `named` largest and smallest classes named."""
    counts = labels.astype(str).value_counts().reindex(list(classes), fill_value=0)
    if len(classes) <= MANY_CLASSES:
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(classes) + 2), 3))
        ax.bar(counts.index, counts.to_numpy(), color="tab:blue")
        ax.set(xlabel="class", ylabel="images", title="Images per class")
        ax.tick_params(axis="x", rotation=90 if len(classes) > 12 else 0)
        fig.tight_layout()
        return fig
    ranked = counts.sort_values(ascending=False, kind="stable")
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(range(len(ranked)), ranked.to_numpy().clip(min=0.8), width=1.0, color="tab:blue")
    ax.set_yscale("log")
    shown = sorted({*range(min(named, len(ranked))), *range(max(0, len(ranked) - named), len(ranked))})
    ax.set_xticks(shown, [f"{ranked.index[i]} ({ranked.iloc[i]})" for i in shown], rotation=90, fontsize=7)
    ax.set(
        xlabel=f"class, largest first (the {named} largest and smallest named)",
        ylabel="images (log scale)",
        title=f"Images per class: {len(classes)} classes, {ranked.iloc[0]} to {ranked.iloc[-1]} images each",
    )
    fig.tight_layout()
    return fig


def show_label_sets(index_sets: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """A multilabel table's label sets: how many labels the images have (cardinality), and how often two
    classes label the same image (co-occurrence counts; the diagonal is each class's images). With more
    than MANY_CLASSES classes, the most frequent ones."""
    sizes = pd.Series([len(s) for s in index_sets]).value_counts().sort_index()
    hot = np.zeros((len(index_sets), len(classes)), dtype=np.int64)
    for row, indices in enumerate(index_sets):
        hot[row, list(indices)] = 1
    together = hot.T @ hot
    keep = np.argsort(-np.diag(together), kind="stable")[:MANY_CLASSES]
    keep.sort()
    together, names = together[np.ix_(keep, keep)], [classes[i] for i in keep]
    n = len(names)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(4 + max(4, 0.45 * n + 2), max(3.2, 0.45 * n + 1.5)), width_ratios=[1, 2]
    )
    left.bar(sizes.index.astype(str), sizes.to_numpy(), color="tab:blue")
    mean = float(np.mean([len(s) for s in index_sets]))
    left.set(xlabel="labels per image", ylabel="images", title=f"Label cardinality (mean {mean:.2f})")
    shown = right.imshow(together, cmap="Blues")
    right.set_xticks(range(n), names, rotation=90 if n > 12 else 0, fontsize=7)
    right.set_yticks(range(n), names, fontsize=7)
    if n <= 15:
        for (i, j), count in np.ndenumerate(together):
            color = "white" if count > together.max() / 2 else "black"
            right.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(shown, ax=right, fraction=0.046)
    what = "classes" if n == len(classes) else f"the {n} most frequent of {len(classes)} classes"
    right.set_title(f"Images labelled with both ({what})")
    fig.tight_layout()
    return fig


def most_confused_classes(matrix: np.ndarray, n: int = MANY_CLASSES) -> np.ndarray:
    """The indices of the n classes with the largest off-diagonal share in a row-normalised confusion
    matrix (missed as true class plus taken for another), most confused first."""
    off = matrix - np.diag(np.diag(matrix))
    return np.argsort(-(off.sum(1) + off.sum(0)), kind="stable")[:n]


def show_size_histogram(heights: pd.Series, widths: pd.Series) -> Figure:
    """Histograms of image heights and widths in pixels; a side every image shares is said in words
    (a histogram of one value is a single bar with meaningless ticks)."""
    if heights.nunique() == 1 and widths.nunique() == 1:
        fig, ax = plt.subplots(figsize=(8, 0.6))
        ax.axis("off")
        ax.text(0.5, 0.5, f"all images are {heights.iloc[0]}×{widths.iloc[0]} px", ha="center", va="center")
        return fig
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for ax, values, name in zip(axes, (heights, widths), ("height", "width"), strict=True):
        ax.set_title(f"Image {name}")
        if values.nunique() == 1:
            ax.axis("off")
            ax.text(0.5, 0.5, f"all images are {values.iloc[0]} px in {name}", ha="center", va="center")
            continue
        ax.hist(values, bins=min(30, values.nunique()), color="tab:green")
        ax.set(xlabel=f"{name} (px)", ylabel="images")
    fig.tight_layout()
    return fig


def show_curves(history: pd.DataFrame) -> Figure:
    """Learning curves per fold: train/val loss, val accuracy (a multilabel run: val mAP) and the learning
    rates of head and body against epoch, with the epochs that trained the head alone (body frozen) shaded."""
    score, score_title = ("val_map", "validation mAP (macro)") if "val_map" in history else ("val_acc", "")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for fold, rows in history.groupby("fold"):
        axes[0].plot(rows["epoch"], rows["train_loss"], "--", label=f"fold {fold} train")
        axes[0].plot(rows["epoch"], rows["val_loss"], label=f"fold {fold} val")
        axes[1].plot(rows["epoch"], rows[score], marker="o", label=f"fold {fold}")
        axes[2].plot(rows["epoch"], rows["lr"], marker=".", label=f"fold {fold} head")
        if "lr_body" in rows:  # runs from before fine-tuning settings have one lr for every layer
            axes[2].plot(rows["epoch"], rows["lr_body"], ":", marker=".", label=f"fold {fold} body (lowest)")
    frozen = history.loc[history["body_frozen"].astype(bool), "epoch"] if "body_frozen" in history else []
    titles = ("loss", score_title or "validation accuracy", "learning rate (end of epoch)")
    for ax, title in zip(axes, titles, strict=True):
        if len(frozen):
            ax.axvspan(
                frozen.min() - 0.5, frozen.max() + 0.5, color="tab:gray", alpha=0.15, label="body frozen"
            )
        ax.set(xlabel="epoch", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure | None, run: RunFolder | BlendFolder, name: str) -> Figure | None:
    """Write the figure to the run's (or blend's) plots/<name>.png and return it for display; None (a step
    that has no figure for this run) writes nothing."""
    if fig is not None:
        atomic_savefig(fig, run.plot(name))
    return fig


def show_confusion(
    matrix: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix (rows sum to 1)"
) -> Figure:
    """A row-normalised confusion matrix with class names and the share in each cell; with more than
    MANY_CLASSES classes, the rows and columns of the most-confused classes only."""
    if len(classes) > MANY_CLASSES:
        keep = most_confused_classes(matrix)
        title = f"{title}: the {len(keep)} most-confused of {len(classes)} classes"
        matrix, classes = matrix[np.ix_(keep, keep)], [classes[i] for i in keep]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.tick_params(axis="x", rotation=90 if n > 12 else 0)
    if n <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            if v > 0:
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def prediction_titles(
    probabilities: np.ndarray, classes: Sequence[str], labels: np.ndarray | None = None
) -> tuple[list[str], list[str]]:
    """Titles and their colours for predicted images (labels as class indices).

    With labels: 'true → predicted', green when right and red when wrong. Without them there is nothing
    to be right against, so 'pred: <class> (<probability>)' in black: never a green that reads as correct.
    """
    names, predicted = np.asarray(classes), probabilities.argmax(1)
    if labels is None:
        titles = [f"pred: {names[p]} ({probabilities[i, p]:.2f})" for i, p in enumerate(predicted)]
        return titles, ["black"] * len(titles)
    pairs = list(zip(labels, predicted, strict=True))
    titles = [f"{names[t]} → {names[p]}" for t, p in pairs]
    return titles, ["tab:green" if t == p else "tab:red" for t, p in pairs]


def show_cam(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 8,
    colors: Sequence[str] = (),
) -> Figure:
    """Images with their class-activation maps overlaid, with optional title colours."""
    fig, axes = image_grid(len(images), ncols)
    for i, (ax, image, cam, title) in enumerate(zip(axes, images, cams, titles, strict=True)):
        show_image(ax, image, title, colors[i] if colors else "black")
        ax.imshow(
            cam, cmap="jet", alpha=0.45, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
        )
    fig.tight_layout()
    return fig


# --- the multilabel task: label sets ----------------------------------------------------------------------
RIGHT, WRONG, MISSED = "tab:green", "tab:red", "tab:orange"


def label_set_lines(
    predicted: np.ndarray, classes: Sequence[str], target: np.ndarray | None = None
) -> list[tuple[str, str]]:
    """The lines under one image of a multilabel grid, as (text, colour), from 0/1 rows over the classes.

    With the true set: the right labels in green, wrong ones (predicted, not in the set) in red marked
    "✗ wrong", missed ones (in the set, not predicted) in orange marked "○ missed"; an empty set predicted
    and true is right. Without it, the predicted set in black.
    """
    names = np.asarray(classes, dtype=object)

    def joined(mask: np.ndarray) -> str:
        return " ".join(names[np.flatnonzero(mask)])

    if target is None:
        return [(f"pred: {joined(predicted) or '(none)'}", "black")]
    predicted, target = predicted.astype(bool), target.astype(bool)
    lines = []
    if (predicted & target).any() or not (predicted | target).any():
        lines.append((joined(predicted & target) or "(none)", RIGHT))
    if (predicted & ~target).any():
        lines.append((f"✗ wrong: {joined(predicted & ~target)}", WRONG))
    if (target & ~predicted).any():
        lines.append((f"○ missed: {joined(target & ~predicted)}", MISSED))
    return lines


CAPTION_POINTS = 10  # the lines under a label-set grid's images: 14 px at the 100 dpi notebooks show


def show_set_grid(
    images: Sequence[np.ndarray],
    lines: Sequence[Sequence[tuple[str, str]]],
    ncols: int = 8,
    size: float = 1.35,
) -> Figure:
    """A grid of images, each with its coloured lines below (label_set_lines). Eight columns make a
    figure under 11 inches wide: JupyterLab shows it unscaled in a 1400 px window, captions readable."""
    most = max((len(ls) for ls in lines), default=1)
    ncols = max(1, min(ncols, len(images)))
    nrows = math.ceil(len(images) / ncols)
    line = CAPTION_POINTS * 1.25  # points between lines
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * size, nrows * (size + 0.15 + most * line / 72)), squeeze=False
    )
    for ax in axes.flat[len(images) :]:
        ax.axis("off")
    for ax, image, image_lines in zip(axes.flat, images, lines, strict=False):
        show_image(ax, image)
        for row, (text, color) in enumerate(image_lines):
            ax.annotate(text, (0.5, 0), xycoords="axes fraction", xytext=(0, -2 - line * row),
                        textcoords="offset points", ha="center", va="top", fontsize=CAPTION_POINTS,
                        color=color)  # fmt: skip
    # the lines hang below the axes, which tight_layout does not count: pad the rows by them (font sizes)
    fig.tight_layout(h_pad=(most * line + 4) / plt.rcParams["font.size"])
    return fig


def show_pr_curves(
    targets: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], shown: Sequence[int]
) -> Figure:
    """Precision against recall (scikit-learn's curve) for the classes `shown`, with each one's AP."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for c in shown:
        precision, recall, _ = precision_recall_curve(targets[:, c], probabilities[:, c])
        ap = average_precision_score(targets[:, c], probabilities[:, c])
        ax.step(recall, precision, where="post", label=f"{classes[c]} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02),
           title=f"Precision-recall of the {len(shown)} classes with the lowest AP")  # fmt: skip
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
