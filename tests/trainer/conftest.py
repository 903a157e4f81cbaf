"""Fixtures for the trainer tests: tiny generated datasets and the real Hydra config, shrunk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from trainer_testkit import write_catalog_dataset, write_image_folder

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def catalog_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    write_catalog_dataset(root)
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real ``conf/train.yaml`` with ``overrides`` and shrink it for a CPU test run."""

    def make(*overrides: str, data_root: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                config_name="train",
                return_hydra_config=True,
                overrides=[
                    "trainer=cpu",
                    "data.image_size=64",
                    "data.batch_size=8",
                    "data.num_workers=0",
                    "data.persistent_workers=false",
                    "data.pin_memory=false",
                    "trainer.max_epochs=1",
                    "trainer.limit_train_batches=2",
                    "trainer.limit_val_batches=2",
                    "+trainer.enable_progress_bar=false",
                    "~callbacks.progress_bar",
                    *([f"data.root={data_root}"] if data_root else []),
                    *overrides,
                ],
            )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "runs")
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield make
    GlobalHydra.instance().clear()
