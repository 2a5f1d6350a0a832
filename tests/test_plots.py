"""Figures whose content depends on the data: what a histogram of one value should say instead."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from helpers.plots import label_set_lines, show_images, show_set_grid, show_size_histogram


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts_and_bars(fig) -> tuple[list[str], int]:
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    return texts, sum(len(ax.patches) for ax in fig.axes)


def test_one_size_for_all_images_is_said_in_words():
    fig = show_size_histogram(pd.Series([32] * 5), pd.Series([32] * 5))
    assert texts_and_bars(fig) == (["all images are 32×32 px"], 0)


def test_sizes_that_vary_get_a_histogram_per_side():
    fig = show_size_histogram(pd.Series([30, 32, 32, 40]), pd.Series([20, 24, 32, 32]))
    texts, bars = texts_and_bars(fig)
    assert texts == [] and bars > 2


def test_a_side_every_image_shares_is_said_beside_the_other_side_histogram():
    fig = show_size_histogram(pd.Series([30, 32, 40]), pd.Series([64, 64, 64]))
    texts, bars = texts_and_bars(fig)
    assert texts == ["all images are 64 px in width"] and bars >= 2


NOTEBOOK_PX = 1250  # JupyterLab's output width in a 1400 px window: a wider figure is shown scaled down


def shown_scale(fig) -> float:
    """How much JupyterLab scales the figure's PNG (100 dpi, tight bounding box) to fit its output area."""
    return min(1.0, NOTEBOOK_PX / (fig.get_size_inches()[0] * fig.dpi))


def overlaps(fig, above: list, below: list) -> list[tuple[str, str]]:
    """Pairs of artists where one of `below` reaches up into one of `above` (display coordinates)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for a in above:
        box_a = a.get_window_extent(renderer)
        for b in below:
            box_b = b.get_window_extent(renderer)
            if box_a.overlaps(box_b) and box_b.y1 > box_a.y0 + 1:
                found.append((str(a), str(b)))
    return found


def test_three_line_titles_stay_below_the_row_above():
    """The label-issue grid: 'given\\n→ suggested\\nscore' titled images in two rows."""
    images = [np.zeros((32, 32, 3), np.uint8)] * 16
    fig = show_images(images, ["1 6\n→ 1 6 7\nscore 0.012"] * 16)
    first_row, second_row = fig.axes[:8], fig.axes[8:16]
    assert overlaps(fig, [ax.images[0] for ax in first_row], [ax.title for ax in second_row]) == []


def test_label_set_captions_are_readable_and_clear_of_the_next_row():
    images = [np.zeros((64, 64, 3), np.uint8)] * 16
    target, predicted = np.eye(10)[[1, 2, 3]].sum(0), np.eye(10)[[1, 4, 5]].sum(0)
    lines = [label_set_lines(predicted, [str(c) for c in range(10)], target)] * 16
    assert len(lines[0]) == 3  # right, ✗ wrong, ○ missed
    fig = show_set_grid(images, lines)
    captions = [text for ax in fig.axes[:8] for text in ax.texts]
    pixels = min(t.get_fontsize() for t in captions) * fig.dpi / 72 * shown_scale(fig)
    assert pixels >= 13, f"captions {pixels:.1f} px tall at 100% zoom"
    assert overlaps(fig, captions, [ax.images[0] for ax in fig.axes[8:16]]) == []
