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
  ``torchvision.datasets.ImageFolder`` reads the photos (full-size decode, no draft), the same
  files as the framework (its suffixes: ImageFolder's own list skips the one GIF of
  hymenoptera's ``train/ants``). The net is built right after seeding on both sides, so each
  seed starts both from the same weights.
* with ``--full-decode``, a third side: the framework with ``data.fast_decode=false`` (every
  JPEG decoded at full size, no crop folded into decoding), to tell the decoding's share.

Recipe check, printed per run (measured, not read from config): training images, steps per
epoch and in all, the learning rate at the start of every epoch (the framework's from its
``LearningRateMonitor`` column, the plain loop's from its optimiser), weight decay and label
smoothing of the optimiser and loss actually built, epochs run, and the best checkpoint's
re-evaluated val accuracy against the best epoch's logged one.

Both run with ``num_workers=0`` and ``--threads`` torch threads (default: torch's), plain first, after an untimed
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

    .venv/bin/python -m benchmarks.train_accuracy [--models baseline_cnn resnet18] [--epochs 5] [--seeds 3] \
        [--seed 42] [--threads N] [--full-decode]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets

import trainer.train as train_module
from trainer.data import IMAGE_SUFFIXES
from trainer.models import build_model
from trainer.train import train
from trainer.transforms import build_transform

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "hymenoptera_data"


def compose_config(
    model: str, root: Path, size: int, epochs: int, batch_size: int, run_dir: Path, seed: int = 42, extra: tuple[str, ...] = ()
) -> DictConfig:
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
                "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", *extra,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


class _Recipe(pl.Callback):
    """What the framework's fit actually built and stepped (for the recipe check)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_images = len(trainer.datamodule.datasets["train"])
        self.steps_per_epoch = trainer.num_training_batches
        optimizer = trainer.optimizers[0]
        self.weight_decay = optimizer.param_groups[0]["weight_decay"]
        self.label_smoothing = pl_module.criterion.label_smoothing
        self.total_steps = trainer.lr_scheduler_configs[0].scheduler.total_steps

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps = trainer.global_step


def run_framework(cfg: DictConfig) -> dict:
    recipe = _Recipe()
    start, cpu_start = time.perf_counter(), time.process_time()
    with _extra_callback(recipe):
        summary = train(cfg)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_epoch = [float(row["val/acc"]) for row in rows if row.get("val/acc")]
    per_epoch = per_epoch[: summary.epochs]  # the fit's epochs, not the closing evaluation
    lr_key = next(key for key in rows[0] if key.startswith("lr-"))
    return {
        "last": per_epoch[-1],
        "best": summary.val_acc,
        "seconds": seconds,
        "cpu": cpu,
        "recipe": {
            "train images": recipe.train_images,
            "steps per epoch": recipe.steps_per_epoch,
            "steps": recipe.steps,
            "one-cycle total steps": recipe.total_steps,
            "epoch lr": [float(row[lr_key]) for row in rows if row.get(lr_key)],
            "weight decay": recipe.weight_decay,
            "label smoothing": recipe.label_smoothing,
            "epochs": summary.epochs,
            "best epoch val acc": max(per_epoch),
        },
    }


@contextlib.contextmanager
def _extra_callback(callback: pl.Callback):
    """``trainer.train.instantiate_dict`` with ``callback`` added to the callbacks it builds."""
    original = train_module.instantiate_dict

    def with_callback(group):
        built = original(group)
        return [*built, callback] if any(isinstance(c, pl.Callback) for c in built) else built

    train_module.instantiate_dict = with_callback
    try:
        yield
    finally:
        train_module.instantiate_dict = original


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
    # The net first, as the framework builds it right after seeding: the same initial weights.
    classes, _ = datasets.folder.find_classes(str(root / "train"))
    net = build_model(cfg.model.net.name, num_classes=len(classes), weights=None)
    train_set = datasets.ImageFolder(
        str(root / "train"), transform=build_transform(size, cfg.data.augment, train=True), is_valid_file=_framework_suffix
    )
    val_set = datasets.ImageFolder(
        str(root / "val"), transform=build_transform(size, cfg.data.augment, train=False), is_valid_file=_framework_suffix
    )
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=batch_size)
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer, total_steps=epochs * len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.model.label_smoothing)
    accuracies, epoch_lr, steps = [], [], 0
    for _ in range(epochs):
        epoch_lr.append(optimizer.param_groups[0]["lr"])
        net.train()
        for images, targets in train_loader:
            optimizer.zero_grad()
            loss = criterion(net(images), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
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
        "recipe": {
            "train images": len(train_set),
            "steps per epoch": len(train_loader),
            "steps": steps,
            "one-cycle total steps": scheduler.total_steps,
            "epoch lr": epoch_lr,
            "weight decay": optimizer.param_groups[0]["weight_decay"],
            "label smoothing": criterion.label_smoothing,
            "epochs": epochs,
            "best epoch val acc": max(accuracies),
        },
    }


def _framework_suffix(path: str) -> bool:
    """The files the framework reads (``trainer.data.IMAGE_SUFFIXES``, no hidden files)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and not Path(path).name.startswith(".")


def recipe_differences(ours: dict, plain: dict) -> list[str]:
    """The recipe facts in which two runs differ (learning rates compared to 1e-9 relative)."""
    differences = []
    for key, value in ours["recipe"].items():
        other = plain["recipe"][key]
        if key == "epoch lr":
            same = len(value) == len(other) and np.allclose(value, other, rtol=1e-9, atol=0)
        elif key == "best epoch val acc":
            continue  # a result, not the recipe
        else:
            same = value == other
        if not same:
            differences.append(f"{key}: {value} / {other}")
    best_logged = ours["recipe"]["best epoch val acc"]
    if abs(ours["best"] - best_logged) > 1e-6:
        differences.append(f"best checkpoint re-evaluated {ours['best']:.4f}, best epoch logged {best_logged:.4f}")
    return differences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset with train/ and val/ folders")
    parser.add_argument("--models", nargs="+", default=["baseline_cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=128, help="input side, pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3, help="runs per model and side, seeds --seed, --seed + 1, ...")
    parser.add_argument("--seed", type=int, default=42, help="first seed (the config's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--full-decode", action="store_true", help="also run the framework with data.fast_decode=false")
    args = parser.parse_args(argv)
    if not (args.root / "train").is_dir():
        parser.error(f"no train/ folder in {args.root}")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for name in ("pytorch_lightning", "lightning_fabric", "trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)

    seeds = [args.seed + i for i in range(args.seeds)]
    sides = ["framework", "plain"] + (["framework, full decode"] if args.full_decode else [])
    print(
        f"{args.root.name}: from scratch, {args.size} px, batch {args.batch_size}, {args.epochs} epochs, CPU, "
        f"{torch.get_num_threads()} threads, num_workers=0, seeds {', '.join(map(str, seeds))}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    results: dict[str, list[dict[str, dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="train_accuracy_") as tmp:
        for model in args.models:
            for seed in seeds:
                root = args.root.resolve()
                cfg = compose_config(model, root, args.size, args.epochs, args.batch_size, Path(tmp) / f"{model}_{seed}", seed)
                warm_up(cfg)
                run = {"plain": run_plain(cfg, root), "framework": run_framework(cfg)}
                if args.full_decode:
                    full_cfg = compose_config(
                        model, root, args.size, args.epochs, args.batch_size, Path(tmp) / f"{model}_{seed}_full", seed,
                        extra=("data.fast_decode=false",),
                    )
                    run["framework, full decode"] = run_framework(full_cfg)
                results.setdefault(model, []).append(run)
                accuracies = ", ".join(f"{side} {run[side]['best']:.3f} (last {run[side]['last']:.3f})" for side in sides)
                print(f"  {model} seed {seed}: best val acc {accuracies}", flush=True)
                for side in sides[::2]:
                    differences = recipe_differences(run[side], run["plain"])
                    print(f"    recipe check, {side} vs plain: {'; '.join(differences) or 'the same'}", flush=True)
                recipe = run["plain"]["recipe"]
                print(
                    f"    plain recipe: {recipe['train images']} training images, {recipe['steps per epoch']} steps per epoch, "
                    f"{recipe['steps']} steps, one-cycle over {recipe['one-cycle total steps']}, weight decay "
                    f"{recipe['weight decay']}, label smoothing {recipe['label smoothing']}, {recipe['epochs']} epochs; "
                    f"wall s {', '.join(format(run[side]['seconds'], '.0f') for side in sides)}",
                    flush=True,
                )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print_table(results, sides)


def print_table(results: dict[str, list[dict[str, dict]]], sides: list[str]) -> None:
    """Mean +- sample std of the best val accuracy per model and side, and each side's paired
    difference to the plain loop (mean +- standard error over the seeds)."""
    seeds = max(len(runs) for runs in results.values())
    print(
        f"| model | side | val acc best, mean +- std over {seeds} seeds | diff to plain (paired: mean +- s.e.) | "
        "val acc last | wall s | CPU s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    std = lambda a: a.std(ddof=1) if len(a) > 1 else 0.0  # noqa: E731
    for model, runs in results.items():
        for side in sides:
            stat = lambda key, side=side: np.array([run[side][key] for run in runs])  # noqa: E731
            diff = stat("best") - np.array([run["plain"]["best"] for run in runs])
            paired = f"{diff.mean():+.3f} +- {std(diff) / np.sqrt(len(diff)):.3f}" if side != "plain" else ""
            print(
                f"| {model} | {side} | {stat('best').mean():.3f} +- {std(stat('best')):.3f} | {paired} | "
                f"{stat('last').mean():.3f} | {stat('seconds').mean():.0f} | {stat('cpu').mean():.0f} |",
                flush=True,
            )

if __name__ == "__main__":
    main()
