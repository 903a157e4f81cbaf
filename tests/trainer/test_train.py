"""The real config composes and trains, shrunk: every experiment, the options, the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from trainer.train import train

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "experiment").glob("*.yaml"))
#: Experiments that train one model (``compare`` is a sweep over them: test_sweep.py).
MODEL_EXPERIMENTS = [name for name in EXPERIMENTS if name != "compare"]


def test_all_model_experiments_exist():
    assert {"baseline_cnn", "alexnet", "vgg16", "resnet18", "resnet34", "resnet50"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", MODEL_EXPERIMENTS)
def test_experiment_runs_fast_dev_run(experiment, make_cfg, catalog_dataset):
    model = experiment.split("_")[0] if experiment != "baseline_cnn" else experiment
    # Smallest input each architecture takes, to keep CPU time down (AlexNet needs 64 px).
    size = 64 if model == "alexnet" else 32
    # Offline: transfer recipes run on random weights here (test_finetune.py covers weights files).
    cfg = make_cfg(
        f"experiment={experiment}", "debug=fdr", f"data.image_size={size}", "data.batch_size=4",
        "model.net.weights=null", data_root=catalog_dataset,
    )
    assert cfg.model.net.name == model
    summary = train(cfg)
    assert summary.model == model and summary.num_classes == 3
    assert 0.0 <= summary.val_acc <= 1.0 and summary.val_loss > 0
    assert json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())["model"] == model


def test_missing_data_root_is_a_clear_error(make_cfg):
    cfg = make_cfg("debug=fdr")
    with pytest.raises(ValueError, match="data.root"):
        train(cfg)


def test_num_classes_comes_from_data_not_yaml(make_cfg, folder_dataset):
    cfg = make_cfg(data_root=folder_dataset)
    assert "num_classes" not in cfg.model.net and "num_classes" not in cfg.model
    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, net={"num_classes": dm.num_classes}, num_classes=dm.num_classes)
    assert model.net.classifier[-1].out_features == 3


@pytest.mark.parametrize(
    "overrides",
    [
        ("model/optimizer=sgd", "model/scheduler=cosine"),
        ("model/scheduler=none", "data.augment=seed"),
        ("data.augment=none", "model.label_smoothing=0.1"),
    ],
)
def test_optimizer_scheduler_and_augment_options(overrides, make_cfg, folder_dataset):
    cfg = make_cfg("debug=fdr", *overrides, data_root=folder_dataset)
    summary = train(cfg)
    assert summary.val_loss > 0


def test_summary_matches_csv_log_and_test_split(make_cfg, catalog_dataset, capsys):
    import csv

    cfg = make_cfg(
        "trainer.max_epochs=2", "data.test_fraction=0.2", "trainer.limit_train_batches=null", "trainer.limit_val_batches=null",
        data_root=catalog_dataset,
    )
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    fit_val = [float(r["val/acc"]) for r in rows if r["val/acc"]][: summary.epochs]
    assert summary.epochs == 2 and len(fit_val) == 2
    assert summary.val_acc == pytest.approx(max(fit_val), abs=1e-6)
    assert summary.test_acc is not None and set(summary.split_sizes) == {"train", "val", "test"}
    assert Path(summary.best_checkpoint).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # Epochs counted from 1 everywhere: the best checkpoint's name, the summary, the printed lines.
    assert summary.best_epoch == fit_val.index(max(fit_val)) + 1 and summary.max_epochs == 2
    assert Path(summary.best_checkpoint).name == f"epoch_{summary.best_epoch:03d}.ckpt"
    assert torch.load(summary.best_checkpoint, weights_only=True)["epoch"] == summary.best_epoch - 1  # Lightning's count
    out = capsys.readouterr().out.splitlines()
    epochs = [line for line in out if line.startswith("baseline_cnn epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["baseline_cnn epoch 1/2", "baseline_cnn epoch 2/2"]
    assert f"val acc {fit_val[1]:.4f}" in epochs[1]
    assert f"baseline_cnn done: best epoch {summary.best_epoch} of 2, val acc {summary.val_acc:.4f}" in out[out.index("Next:") - 3]
    assert summary.dataset_images == sum(summary.split_sizes.values()) == 30 and summary.seed == 42
