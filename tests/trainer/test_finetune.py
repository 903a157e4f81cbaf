"""Fine-tuning strategies: what trains, from when, at which learning rate."""

from __future__ import annotations

import pytest

import torch
from hydra.utils import instantiate
from trainer_probes import TrainingProbe

from trainer.errors import UserError
from trainer.finetuning import Finetuning, param_groups
from trainer.models import build_model
from trainer.train import train

PROBE = "+callbacks.probe._target_=trainer_probes.TrainingProbe"


def test_param_groups_per_strategy():
    net = build_model("resnet18", num_classes=3)
    head = {id(p) for p in net.fc.parameters()}
    total = sum(p.numel() for p in net.parameters())

    (everything,) = param_groups(net, "fc", "scratch")
    assert sum(p.numel() for p in everything["params"]) == total and everything["lr_scale"] == 1

    (only_head,) = param_groups(net, "fc", "frozen")
    assert {id(p) for p in only_head["params"]} == head

    for strategy in ("full", "gradual"):
        head_group, backbone = param_groups(net, None, strategy, backbone_lr_ratio=0.01)
        assert {id(p) for p in head_group["params"]} == head  # None: the last child, fc
        assert backbone["lr_scale"] == 0.01 and not head & {id(p) for p in backbone["params"]}
        assert sum(p.numel() for g in (head_group, backbone) for p in g["params"]) == total


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="scratch, frozen, full, gradual"):
        param_groups(build_model("baseline_cnn", num_classes=2), None, "thaw")
    with pytest.raises(ValueError):
        Finetuning("full")


@pytest.fixture
def baseline_weights(tmp_path):
    """A 'pretrained' baseline_cnn state dict (random, 5 classes: the head gets replaced)."""
    path = tmp_path / "pretrained.pt"
    torch.save(build_model("baseline_cnn", num_classes=5).state_dict(), path)
    return path


def test_gradual_trains_the_head_first_then_all_with_lower_backbone_lr(make_cfg, catalog_dataset, baseline_weights):
    cfg = make_cfg(
        "model.finetune=gradual", f"model.net.weights={baseline_weights}", "model.unfreeze_at_epoch=1",
        "model.backbone_lr_ratio=0.1", "trainer.max_epochs=2", PROBE, data_root=catalog_dataset,
    )
    summary = train(cfg)
    pretrained = torch.load(baseline_weights, weights_only=True)
    first, second = [r for r in TrainingProbe.records if r["event"] == "epoch_end"]
    conv = "features.0.weight"
    # Epoch 0: the backbone's convolutions are frozen and unchanged, the head trains.
    assert conv in first["frozen"] and not any(n.startswith("classifier") for n in first["frozen"])
    assert torch.equal(first["params"][conv], pretrained[conv])
    # Epoch 1: everything trains, the backbone at a tenth of the head's learning rate.
    assert second["frozen"] == [] and not torch.equal(second["params"][conv], pretrained[conv])
    assert second["group_names"] == ["head", "backbone"]
    head_lr, backbone_lr = second["lrs"]
    assert backbone_lr == pytest.approx(head_lr * 0.1)
    assert summary.finetune == "gradual" and summary.trainable_parameters == summary.parameters


def test_full_finetune_uses_discriminative_rates_from_the_start(make_cfg, catalog_dataset, baseline_weights):
    cfg = make_cfg(
        "model.finetune=full", f"model.net.weights={baseline_weights}", "model/scheduler=none",
        "model.optimizer.lr=0.001", "model.backbone_lr_ratio=0.01", PROBE, data_root=catalog_dataset,
    )
    train(cfg)
    (record,) = [r for r in TrainingProbe.records if r["event"] == "epoch_end"]
    assert record["frozen"] == [] and record["lrs"] == pytest.approx([1e-3, 1e-5])


def test_frozen_keeps_the_backbone_and_its_batch_norm_statistics(make_cfg, catalog_dataset):
    cfg = make_cfg("experiment=resnet18", "model.finetune=frozen", "data.image_size=32", PROBE, data_root=catalog_dataset)
    dm = instantiate(cfg.data)
    summary = train(cfg)
    assert summary.trainable_parameters == 512 * dm.num_classes + dm.num_classes
    (record,) = [r for r in TrainingProbe.records if r["event"] == "epoch_end"]
    assert record["group_names"] == ["head"]
    state = torch.load(summary.best_checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(state["net.bn1.running_mean"], torch.zeros(64))  # as initialised: not updated


def test_pretrained_weights_with_scratch_is_refused(make_cfg, catalog_dataset, baseline_weights):
    cfg = make_cfg(f"model.net.weights={baseline_weights}", "debug=fdr", data_root=catalog_dataset)
    with pytest.raises(UserError, match="model.finetune=frozen|full|gradual"):
        train(cfg)


@pytest.mark.parametrize(
    ("experiment", "model", "strategy"),
    [("vgg16_transfer", "vgg16", "frozen"), ("alexnet_transfer", "alexnet", "frozen"), ("resnet50_finetune", "resnet50", "gradual")],
)
def test_transfer_experiments_run_offline_with_a_weights_file(experiment, model, strategy, make_cfg, tmp_path):
    weights = tmp_path / f"{model}.pth"
    cfg = make_cfg(f"experiment={experiment}", f"model.net.weights={weights}")
    assert cfg.model.net.name == model and cfg.model.finetune == strategy
    assert cfg.model.net.weights == str(weights)
    assert make_cfg(f"experiment={experiment}").model.net.weights.startswith("IMAGENET1K")
