"""Benchmark: training images per second delivered by the DataModule, per core, beside a plain
``torchvision.datasets.ImageFolder`` with PIL transforms (issue 5).

Both read the same training photos (``../shared/data/hymenoptera_data/train`` by default: 244
JPEGs of about 500x375 px) in the same run and deliver the same batches: random resized crop
(scale 0.5-1) to ``--size`` px, horizontal flip, float tensor normalised with ImageNet statistics,
batches of ``--batch-size``, shuffled. Both run in the main process (``num_workers=0``), so the
figure is per core; workers multiply both alike.

* plain: ``ImageFolder(root, transform=T.Compose([T.RandomResizedCrop, T.RandomHorizontalFlip,
  T.ToTensor, T.Normalize]))`` (torchvision.transforms v1, PIL), ``DataLoader(shuffle=True)``.
* datamodule: ``trainer.data.ImageDataModule(augment="light")``'s ``train_dataloader()``: JPEGs
  decoded at reduced scale (PIL ``draft``, 1/2 to 1/8 of the pixels, never below ``--size``),
  transforms v2 on tensors.
* datamodule, cached: the same with ``cache_images=True``: the warm-up pass decodes every
  image once and keeps it (uint8, at the reduced scale); the measured passes only transform.

Each loader runs ``--epochs`` passes after one warm-up pass (page cache, imports); the figure
is images over the wall time of the measured passes. The machine is shared: ``uptime`` load is
printed with the figures.

Reproduce::

    .venv/bin/python -m benchmarks.dataloading [--root DIR] [--size 128] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from trainer.data import ImageDataModule
from trainer.transforms import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "hymenoptera_data"


def plain_loader(train_dir: Path, size: int, batch_size: int) -> DataLoader:
    transform = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return DataLoader(datasets.ImageFolder(str(train_dir), transform=transform), batch_size=batch_size, shuffle=True)


def datamodule_loader(root: Path, size: int, batch_size: int, cache: bool = False) -> DataLoader:
    dm = ImageDataModule(
        root=str(root), image_size=size, batch_size=batch_size, augment="light", num_workers=0, cache_images=cache
    )
    dm.setup("fit")
    return dm.train_dataloader()


def images_per_second(loader: DataLoader, epochs: int) -> float:
    for _ in loader:  # warm-up pass
        pass
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch, _targets in loader:
            images += len(batch)
    return images / (time.perf_counter() - start)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset with a train/ folder")
    parser.add_argument("--size", type=int, default=128, help="network input side, pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="measured passes per loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core each; the loaders' transforms would otherwise spread
    torch.manual_seed(0)

    print(f"training images of {args.root}, {args.size} px, batch {args.batch_size}, 1 thread, num_workers=0")
    print(f"load average before: {load_average()} ({os.cpu_count()} cores)")
    # Interleaved twice, so that a change in the machine's load hits both.
    loaders = {
        "plain ImageFolder + PIL transforms": lambda: plain_loader(args.root / "train", args.size, args.batch_size),
        "ImageDataModule (draft decode)": lambda: datamodule_loader(args.root, args.size, args.batch_size),
        "ImageDataModule, cache_images=true": lambda: datamodule_loader(args.root, args.size, args.batch_size, True),
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(2):
        for name, make in loaders.items():
            rates[name].append(images_per_second(make(), args.epochs))
    print(f"load average after: {load_average()}")
    print()
    print("| loader | images/s per core (runs) | best |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {' / '.join(f'{v:.0f}' for v in values)} | {max(values):.0f} |")
    plain, *ours = (max(v) for v in rates.values())
    print(f"\nspeed-up over plain (best of each): {ours[0] / plain:.2f}x decoding every epoch, {ours[1] / plain:.2f}x cached")


if __name__ == "__main__":
    main()
