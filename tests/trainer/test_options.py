"""Run options: class weighting, the learning-rate finder, loggers, trainer and launcher presets."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import WeightedRandomSampler
from trainer_testkit import write_image_folder

from trainer.callbacks import ChannelsLast
from trainer.data import ImageDataModule
from trainer.errors import UserError
from trainer.loggers import require
from trainer.models import build_model
from trainer.train import train


@pytest.fixture
def imbalanced_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "imbalanced"
    write_image_folder(root, per_class=40, classes=("circle",))
    write_image_folder(root, per_class=8, classes=("square",))
    return root


def test_class_weights_come_from_the_train_split(imbalanced_dataset):
    dm = ImageDataModule(root=str(imbalanced_dataset), image_size=16, batch_size=8, class_weighting="loss")
    counts = dm.class_counts()
    assert counts == [n for n in counts] and counts[0] > 3 * counts[1]
    weights = dm.class_weights()
    assert weights == pytest.approx([sum(counts) / (2 * c) for c in counts])
    assert sum(w * c for w, c in zip(weights, counts)) == pytest.approx(sum(counts))  # mean 1 per image
    assert dm.loss_weights == weights
    assert ImageDataModule(root=str(imbalanced_dataset)).loss_weights is None
    with pytest.raises(UserError, match="none, loss, sampler"):
        ImageDataModule(root=str(imbalanced_dataset), class_weighting="oversample")


def test_weighted_sampler_draws_classes_evenly(imbalanced_dataset):
    dm = ImageDataModule(root=str(imbalanced_dataset), image_size=16, batch_size=8, class_weighting="sampler")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler) and len(loader.sampler) == len(dm.datasets["train"])
    targets = dm.datasets["train"].targets
    drawn = Counter(targets[i] for _ in range(20) for i in loader.sampler)
    assert 0.4 < drawn[1] / sum(drawn.values()) < 0.6  # ~1/2, against ~1/6 in the split


@pytest.mark.parametrize("weighting", ["loss", "sampler"])
def test_class_weighting_trains(weighting, make_cfg, imbalanced_dataset):
    summary = train(make_cfg(f"data.class_weighting={weighting}", "debug=fdr", data_root=imbalanced_dataset))
    assert summary.val_loss > 0
    cfg = make_cfg("data.class_weighting=loss", data_root=imbalanced_dataset)
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, net={"num_classes": 2}, num_classes=2, class_weights=dm.loss_weights)
    assert torch.allclose(model.criterion.weight, torch.tensor(dm.class_weights()))
    assert model.hparams.class_weights == pytest.approx(dm.class_weights())


def test_lr_finder_sets_the_learning_rate(make_cfg, tmp_path):
    # The finder needs a dozen steps or more for a suggestion: 90 images in batches of 4.
    dataset = write_image_folder(tmp_path / "shapes", per_class=30)
    cfg = make_cfg(
        "tune_lr=true", "lr_find.num_training=20", "trainer.limit_train_batches=null", "data.image_size=16",
        "data.batch_size=4", data_root=dataset,
    )
    configured = cfg.model.optimizer.lr
    summary = train(cfg)
    assert summary.learning_rate != configured and cfg.model.optimizer.lr == summary.learning_rate
    assert 1e-8 <= summary.learning_rate <= 1
    hparams = OmegaConf.load(Path(cfg.paths.output_dir) / "csv" / "hparams.yaml")
    assert hparams.model.optimizer.lr == summary.learning_rate  # logged with the config
    if importlib.util.find_spec("matplotlib"):
        assert (Path(cfg.paths.output_dir) / "lr_find.png").stat().st_size > 1000


@pytest.mark.skipif(not importlib.util.find_spec("tensorboard"), reason="tensorboard not installed")
def test_many_loggers_write_csv_and_tensorboard(make_cfg, catalog_dataset):
    cfg = make_cfg("logger=many", data_root=catalog_dataset)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "csv" / "metrics.csv").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_missing_logger_package_is_a_clear_error(make_cfg):
    with pytest.raises(ModuleNotFoundError, match="pip install not_a_real_package"):
        require("not_a_real_package", feature="logger=x")
    cfg = make_cfg("logger=mlflow")
    assert cfg.logger.mlflow.tracking_uri.startswith("file:") and cfg.logger.mlflow.run_name == "baseline_cnn"
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(Exception, match="pip install mlflow"):
            instantiate(cfg.logger.mlflow)


def test_gpu_and_ddp_presets_compose(make_cfg, monkeypatch):
    gpu = make_cfg("trainer=gpu")
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.accelerator == "gpu"
    assert gpu.callbacks.channels_last.enabled == "auto"
    ddp = make_cfg("trainer=ddp")
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.devices == -1 and ddp.trainer.precision == "bf16-mixed"
    monkeypatch.setenv("SLURM_NNODES", "3")
    assert make_cfg("trainer=ddp_multinode").trainer.num_nodes == 3
    assert make_cfg("trainer=ddp_multinode", "trainer.num_nodes=8").trainer.num_nodes == 8


def test_channels_last_converts_the_net_and_its_inputs():
    module = torch.nn.Module()
    module.net = build_model("baseline_cnn", num_classes=2)
    ChannelsLast(enabled=True).setup(None, module, "fit")
    conv = module.net.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    assert module.net(torch.rand(2, 3, 16, 16)).shape == (2, 2)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(
    not importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher"), reason="hydra-submitit-launcher not installed"
)
def test_slurm_launcher_preset_maps_to_submitit(make_cfg):
    cfg = make_cfg(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
        "trainer=ddp_multinode", "trainer.num_nodes=2", "trainer.devices=4",
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["nodes"] == 2
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == cfg.trainer.devices == 4
    assert launcher["timeout_min"] > 0 and launcher["name"] == "train"


def test_compare_experiment_sweeps_all_six_models(make_cfg):
    cfg = make_cfg("experiment=compare")
    assert cfg.hydra.mode.name == "MULTIRUN"
    models = cfg.hydra.sweeper.params.model.split(",")
    assert models == ["baseline_cnn", "alexnet", "vgg16", "resnet18", "resnet34", "resnet50"]
