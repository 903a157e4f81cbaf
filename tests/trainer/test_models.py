"""Model registry: builders, heads, weights (by name and from a local file), name errors."""

from __future__ import annotations

import pytest
import torch
import torchvision

from trainer.errors import UserError
from trainer.models import MODELS, build_model


@pytest.mark.parametrize("name", ["baseline_cnn", "resnet18"])
@pytest.mark.parametrize("size", [32, 64, 96])
def test_builds_and_maps_images_to_logits(name, size):
    net = build_model(name, num_classes=3)
    assert net(torch.rand(2, 3, size, size)).shape == (2, 3)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError) as error:
        build_model("resnet9000", num_classes=2)
    for name in MODELS:
        assert name in str(error.value)


def test_builder_is_keyword_only():
    with pytest.raises(TypeError):
        build_model("resnet18", 3)  # type: ignore[misc]


def test_published_weights_go_through_torchvision_and_head_is_replaced(monkeypatch):
    reference = torchvision.models.resnet18(num_classes=1000).state_dict()
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return reference

    # No internet: stand in for torchvision's download, keep its weights-enum resolution.
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    net = build_model("resnet18", num_classes=4, weights="IMAGENET1K_V1")
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert net.fc.out_features == 4
    assert torch.equal(net.conv1.weight, reference["conv1.weight"])


def test_bad_weights_name_fails():
    with pytest.raises(UserError, match="IMAGENET1K_V1, DEFAULT"):
        build_model("resnet18", num_classes=2, weights="NOT_A_WEIGHTS_NAME")


def test_local_imagenet_weights_file(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    net = build_model("resnet18", num_classes=3, weights=str(path))
    assert net.fc.out_features == 3
    assert torch.equal(net.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])


def test_local_weights_file_with_matching_head_loads_whole(tmp_path):
    trained = build_model("baseline_cnn", num_classes=3)
    path = tmp_path / "baseline.pt"
    torch.save(trained.state_dict(), path)
    net = build_model("baseline_cnn", num_classes=3, weights=str(path))
    for key, value in trained.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)


def test_missing_weights_file_fails(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        build_model("resnet18", num_classes=2, weights=str(tmp_path / "nope.pth"))


def test_weights_file_that_is_not_a_state_dict_fails(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a tensor in sight")
    with pytest.raises(UserError, match="is not a state-dict file that loads safely"):
        build_model("resnet18", num_classes=2, weights=str(path))
    torch.save(build_model("baseline_cnn", num_classes=2).state_dict(), path)
    with pytest.raises(UserError, match="does not fit resnet18: .* saved from torchvision's resnet18"):
        build_model("resnet18", num_classes=2, weights=str(path))
