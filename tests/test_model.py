"""The model factory: right head for any family, clear errors, pretrained weights from disk or the cache."""

import time

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from torch import nn

from helpers.model import check_backbone, count_parameters, create_model, default_img_size
from helpers.weights import cached_weights_file


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No Hugging Face cache: the state of a fresh offline machine, whatever this one has cached."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    head = model.pretrained_cfg["classifier"] + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(head)}


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "resnet18"])
def test_head_has_the_requested_classes(backbone):
    model = create_model(backbone, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "suggestion"), [("resnet-18", "resnet18"), ("efficentnet_b2", "efficientnet_b2")]
)
def test_unknown_backbone_suggests_close_names(name, suggestion):
    with pytest.raises(ValueError, match=suggestion):
        create_model(name, num_classes=3)


def test_unknown_pretrained_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet18.a1_in1k"):
        check_backbone("resnet18.bogus")


def test_pretrained_without_file_or_cache_fails_fast_and_says_what_to_do(empty_hf_cache):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="weights_file=.*pretrained=False"):
        create_model("test_resnet", num_classes=3, pretrained=True)
    assert time.monotonic() - start < 10


def test_backbone_without_pretrained_weights_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="no Hugging Face weights.*weights_file"):
        create_model("test_coatnet", num_classes=3, pretrained=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_the_backbone_and_renews_the_head(tmp_path, suffix):
    source = create_model("test_resnet", num_classes=5)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        safetensors.torch.save_file(source.state_dict(), str(path))
    model = create_model("test_resnet", num_classes=3, pretrained=True, weights_file=str(path))
    assert model.get_classifier().out_features == 3
    loaded, saved = _backbone_state(model), _backbone_state(source)
    assert loaded.keys() == saved.keys() and loaded
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_named_weights_file_is_loaded_even_with_pretrained_false(tmp_path):
    source = create_model("test_efficientnet", num_classes=4)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model("test_efficientnet", num_classes=4, weights_file=str(tmp_path / "w.pth"))
    loaded, saved = _backbone_state(model), _backbone_state(source)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # timm keeps a file's head only for the pretrained config's class count (1000), even when it fits
    assert not torch.equal(model.get_classifier().weight, source.get_classifier().weight)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model("test_resnet", num_classes=3, pretrained=True, weights_file=str(missing))


def test_pretrained_weights_come_from_the_hugging_face_cache_offline(empty_hf_cache):
    source = timm.create_model("test_resnet", num_classes=1000)
    repo = empty_hf_cache / "models--timm--test_resnet.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file(source.state_dict(), str(snapshot / "model.safetensors"))

    assert cached_weights_file("test_resnet") == snapshot / "model.safetensors"
    model = create_model("test_resnet", num_classes=2, pretrained=True)
    loaded, saved = _backbone_state(model), _backbone_state(source)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_count_parameters_counts_every_parameter():
    assert count_parameters(nn.Linear(3, 2)) == 8
    model = create_model("test_resnet", num_classes=3)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0


def test_default_img_size_is_the_backbones_input_size():
    assert default_img_size("resnet18") == 224
    assert default_img_size("tf_efficientnet_b2") == 260
