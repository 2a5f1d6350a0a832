"""TTA views: each name is one distinct transform, names are validated, probabilities come per view."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch

from helpers.precision import Precision
from helpers.tasks import MultiLabel, SingleLabel
from helpers.tta import SQUARE_ONLY, VIEWS, check_views, mean_over_views, view_probabilities

FP32 = Precision("cpu", torch.float32)


def random_batch(shape=(1, 3, 5, 5), seed: int = 0) -> torch.Tensor:
    """Random values have no symmetry, so two different transforms cannot give the same output."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(VIEWS, 2)))
def test_no_two_views_are_the_same_transform(a: str, b: str) -> None:
    x = random_batch()
    assert not torch.equal(VIEWS[a](x), VIEWS[b](x)), f"views {a!r} and {b!r} are the same transform"


def test_every_view_keeps_the_batch_shape_on_square_inputs() -> None:
    x = random_batch((2, 3, 5, 5))
    for name, view in VIEWS.items():
        assert view(x).shape == x.shape, name


def test_the_original_pipelines_fourth_view_duplicated_its_third() -> None:
    """What the distinctness test guards against: flip(-1) then flip(-2, -1) is just flip(-2)."""
    x = random_batch()
    assert torch.equal(x.flip(-1).flip([-2, -1]), x.flip(-2))
    assert torch.equal(x.flip(-1).flip([-2, -1]), VIEWS["vflip"](x))


def test_non_square_views_work_on_non_square_inputs() -> None:
    x = random_batch((2, 3, 4, 6))
    for name in set(VIEWS) - SQUARE_ONLY:
        assert VIEWS[name](x).shape == x.shape, name


def test_check_views_accepts_known_distinct_views() -> None:
    assert check_views(["identity", "hflip"]) == ["identity", "hflip"]
    assert check_views(tuple(VIEWS)) == list(VIEWS)
    assert check_views(["identity", "hvflip"], square=False) == ["identity", "hvflip"]


def test_check_views_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown TTA view"):
        check_views(["identity", "flip"])


def test_check_views_rejects_a_repeated_view() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        check_views(["identity", "hflip", "hflip"])


@pytest.mark.parametrize("name", sorted(SQUARE_ONLY))
def test_check_views_rejects_square_only_views_on_non_square_inputs(name: str) -> None:
    with pytest.raises(ValueError, match="square"):
        check_views(["identity", name], square=False)
    assert check_views(["identity", name], square=True) == ["identity", name]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4).eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_view_probabilities_equal_each_view_run_alone(model: torch.nn.Module, channels_last: bool) -> None:
    views = list(VIEWS)
    x = random_batch((3, 3, 32, 32), seed=1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    probs = view_probabilities(model, x, views, FP32, SingleLabel())
    assert probs.shape == (len(views), 3, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(views), 3))
    with torch.no_grad():
        one_by_one = torch.stack([model(VIEWS[v](x)).softmax(-1) for v in views])
    torch.testing.assert_close(probs, one_by_one, atol=1e-5, rtol=1e-4)
    # the views really do change what the model sees (else the comparison above proves little)
    assert not torch.allclose(one_by_one[0], one_by_one[1], atol=1e-4)


def test_multilabel_view_probabilities_are_sigmoids_of_each_view(model: torch.nn.Module) -> None:
    views = ["identity", "hflip", "rot90"]
    x = random_batch((3, 3, 32, 32), seed=2)
    probs = view_probabilities(model, x, views, FP32, MultiLabel())
    with torch.no_grad():
        one_by_one = torch.stack([model(VIEWS[v](x)).sigmoid() for v in views])
    torch.testing.assert_close(probs, one_by_one, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(probs.sum(-1), torch.ones(len(views), 3), atol=1e-2)


def test_mean_over_views_averages_the_first_axis() -> None:
    per_view = torch.rand(3, 5, 4).softmax(-1).numpy()
    torch.testing.assert_close(
        torch.from_numpy(mean_over_views(per_view)), torch.from_numpy(per_view).mean(0)
    )
