"""Figures whose content depends on the data: what a histogram of one value should say instead."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from helpers.plots import show_size_histogram


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
