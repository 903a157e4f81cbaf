"""Benchmark: validation accuracy and training time of the framework beside a plain PyTorch loop
with the same recipe, on real photos, from scratch, on CPU (issue 5).

Data: ``../shared/data/hymenoptera_data`` (ants vs bees, its own ``train/`` 244 and ``val/`` 153
photos). For each model (``--models``), in the same process and the same run:

* framework: ``trainer.train.train`` on the real config (``conf/``, composed as
  ``python -m trainer experiment=<model> data.root=... data.image_size=128 trainer.max_epochs=E``)
  with early stopping and the progress bar off; everything else as shipped: checkpoints, CSV
  log, sanity validation, and the closing evaluation of the best checkpoint, all in its time.
* plain: a hand-written loop with the same recipe, taken from the same composed config: the
  same builder (``trainer.models.build_model``), optimiser and one-cycle schedule (the config's
  partials, stepped per batch), cross-entropy, transforms (``trainer.transforms.build_transform``,
  ``light`` augmentation for training), batch size, epochs, seed, dropped ragged last batch;
  ``torchvision.datasets.ImageFolder`` reads the photos (full-size decode, no draft).

Both run with ``num_workers=0`` and torch's default threads, plain first, after an untimed
warm-up step of the model (one-time kernel set-up would otherwise land on whichever runs first).
Printed per model: validation accuracy after the last epoch and the best over the epochs (the
framework reports the best checkpoint's), wall and CPU seconds (``time.process_time``: all
threads of this process; on a shared machine it moves much less with other processes' load than
wall time), and the framework/plain ratio of each. Accuracy from scratch on 244
photos in a few epochs is noisy (a few images of 153 either way); the two runs also differ in
shuffling order and decode, so compare the differences against that noise: with ``--seeds N``
(default 3) each side runs N times (seeds 42, 43, ...: weights, batches, augmentation) and the
table gives the mean +- sample std of the best val accuracy per model and side.

Reproduce::

    .venv/bin/python -m benchmarks.train_accuracy [--models baseline_cnn resnet18] [--epochs 5] [--seeds 3]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets

from trainer.models import build_model
from trainer.train import train
from trainer.transforms import build_transform

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "hymenoptera_data"


def compose_config(model: str, root: Path, size: int, epochs: int, batch_size: int, run_dir: Path, seed: int = 42) -> DictConfig:
    """The real config, as ``python -m trainer experiment=<model> ...`` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                f"experiment={model}", f"seed={seed}", f"data.root={root}", f"data.image_size={size}", f"data.batch_size={batch_size}",
                "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false",
                f"trainer.max_epochs={epochs}", "~callbacks.early_stopping", "~callbacks.progress_bar",
                "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def run_framework(cfg: DictConfig) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = train(cfg)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as handle:
        per_epoch = [float(row["val/acc"]) for row in csv.DictReader(handle) if row.get("val/acc")]
    per_epoch = per_epoch[: summary.epochs]  # the fit's epochs, not the closing evaluation
    return {"last": per_epoch[-1], "best": summary.val_acc, "seconds": seconds, "cpu": cpu}


def warm_up(cfg: DictConfig) -> None:
    """One untimed training step of the model at the benchmark's input size."""
    net = build_model(cfg.model.net.name, num_classes=2)
    size = cfg.data.image_size
    net(torch.rand(cfg.data.batch_size, 3, size, size)).sum().backward()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_plain(cfg: DictConfig, root: Path) -> dict:
    """A plain PyTorch loop with the recipe of ``cfg``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    seed_all(cfg.seed)
    size, batch_size, epochs = cfg.data.image_size, cfg.data.batch_size, cfg.trainer.max_epochs
    train_set = datasets.ImageFolder(str(root / "train"), transform=build_transform(size, cfg.data.augment, train=True))
    val_set = datasets.ImageFolder(str(root / "val"), transform=build_transform(size, cfg.data.augment, train=False))
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=batch_size)
    net = build_model(cfg.model.net.name, num_classes=len(train_set.classes), weights=None)
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer, total_steps=epochs * len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.model.label_smoothing)
    accuracies = []
    for _ in range(epochs):
        net.train()
        for images, targets in train_loader:
            optimizer.zero_grad()
            loss = criterion(net(images), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for images, targets in val_loader:
                correct += (net(images).argmax(1) == targets).sum().item()
        accuracies.append(correct / len(val_set))
    return {
        "last": accuracies[-1],
        "best": max(accuracies),
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu_start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset with train/ and val/ folders")
    parser.add_argument("--models", nargs="+", default=["baseline_cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=128, help="input side, pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3, help="runs per model and side, seeds --seed, --seed + 1, ...")
    parser.add_argument("--seed", type=int, default=42, help="first seed (the config's default)")
    args = parser.parse_args(argv)
    if not (args.root / "train").is_dir():
        parser.error(f"no train/ folder in {args.root}")
    logging.basicConfig(level=logging.WARNING)
    for name in ("pytorch_lightning", "lightning_fabric", "trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)

    seeds = [args.seed + i for i in range(args.seeds)]
    print(
        f"{args.root.name}: from scratch, {args.size} px, batch {args.batch_size}, {args.epochs} epochs, CPU, "
        f"{torch.get_num_threads()} threads, num_workers=0, seeds {', '.join(map(str, seeds))}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    results: dict[str, list[tuple[dict, dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="train_accuracy_") as tmp:
        for model in args.models:
            for seed in seeds:
                run_dir = Path(tmp) / f"{model}_{seed}"
                cfg = compose_config(model, args.root.resolve(), args.size, args.epochs, args.batch_size, run_dir, seed)
                warm_up(cfg)
                plain = run_plain(cfg, args.root.resolve())
                ours = run_framework(cfg)
                results.setdefault(model, []).append((ours, plain))
                print(f"  {model} seed {seed}: framework {ours}, plain {plain}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(
        f"| model | val acc best, mean +- std over {len(seeds)} seeds (framework / plain) | best diff | "
        "val acc last (framework / plain) | wall s (framework / plain) | CPU s (framework / plain) | CPU ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model, runs in results.items():
        def stat(side: int, key: str) -> np.ndarray:
            return np.array([run[side][key] for run in runs])

        best_ours, best_plain = stat(0, "best"), stat(1, "best")
        std = (lambda a: a.std(ddof=1) if len(a) > 1 else 0.0)
        print(
            f"| {model} | {best_ours.mean():.3f} +- {std(best_ours):.3f} / {best_plain.mean():.3f} +- {std(best_plain):.3f} | "
            f"{best_ours.mean() - best_plain.mean():+.3f} | {stat(0, 'last').mean():.3f} / {stat(1, 'last').mean():.3f} | "
            f"{stat(0, 'seconds').mean():.0f} / {stat(1, 'seconds').mean():.0f} | {stat(0, 'cpu').mean():.0f} / "
            f"{stat(1, 'cpu').mean():.0f} | {stat(0, 'cpu').sum() / stat(1, 'cpu').sum():.2f} |"
        )

if __name__ == "__main__":
    main()
