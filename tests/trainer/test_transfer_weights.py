"""The transfer experiments run offline from a local weights file in torchvision's format.

The file is what ``torch.save(torchvision.models.<name>(weights=...).state_dict(), path)`` writes
on a connected machine (README, "Pretrained weights"): the ImageNet architecture with its
1000-class head. Here it is saved from a freshly built network (random weights, same format).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from trainer.train import train


@pytest.mark.parametrize(
    ("experiment", "model", "image_size"),
    [
        ("alexnet_transfer", "alexnet", 64),  # AlexNet needs about 63 px of input
        pytest.param("vgg16_transfer", "vgg16", 32, marks=pytest.mark.slow),  # 528 MB of weights
        ("resnet50_finetune", "resnet50", 32),
    ],
)
def test_transfer_experiment_trains_from_a_local_torchvision_state_dict(
    experiment, model, image_size, make_cfg, catalog_dataset, tmp_path, caplog
):
    weights = tmp_path / f"{model}-imagenet.pth"
    torch.save(torchvision.models.get_model(model, weights=None).state_dict(), weights)
    cfg = make_cfg(
        f"experiment={experiment}", f"model.net.weights={weights}", "debug=fdr",
        f"data.image_size={image_size}", "data.batch_size=4", data_root=catalog_dataset,
    )
    with caplog.at_level(logging.INFO, logger="trainer.models"):
        summary = train(cfg)
    # The file was read and its 1000-class ImageNet head swapped for the dataset's 3 classes.
    assert f"loaded {model} weights from {weights}; head replaced (1000 -> 3 classes)" in caplog.text
    assert summary.weights == str(weights) and summary.finetune == cfg.model.finetune
    assert summary.num_classes == 3 and 0.0 <= summary.metrics["val/acc"] <= 1.0


def test_a_weights_file_in_torch_home_serves_the_weights_name_offline(tmp_path, monkeypatch):
    """README: files copied into ``$TORCH_HOME/hub/checkpoints/`` keep the names working offline."""
    from trainer.models import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18")["IMAGENET1K_V1"].url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, cached)
    net = build_model("resnet18", num_classes=2, weights="IMAGENET1K_V1")
    assert torch.equal(net.state_dict()["conv1.weight"], state["conv1.weight"])
    assert net.fc.out_features == 2
