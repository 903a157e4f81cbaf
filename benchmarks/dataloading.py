"""Benchmark: training images per second delivered by the DataModule, per core, beside a plain
``torchvision.datasets.ImageFolder`` with PIL transforms (issue 5).

Both read the same training photos (``../shared/data/hymenoptera_data/train`` by default: 244
JPEGs of about 500x375 px) in the same run and deliver the same batches: random resized crop
(scale 0.5-1) to ``--size`` px, horizontal flip, float tensor normalised with ImageNet statistics,
batches of ``--batch-size``, shuffled. Both run in the main process (``num_workers=0``), so the
figure is per core; workers multiply both alike.

* plain: ``ImageFolder(root, transform=T.Compose([T.RandomResizedCrop, T.RandomHorizontalFlip,
  T.ToTensor, T.Normalize]))`` (torchvision.transforms v1, PIL), ``DataLoader(shuffle=True)``.
* datamodule: ``trainer.data.ImageDataModule(augment="light")``'s ``train_dataloader()``: the
  random resized crop folded into decoding (``trainer.decoding``: crop drawn first, JPEG decoded
  by libjpeg-turbo at the smallest M/8 scale that keeps the crop at least ``--size``, the crop
  resized by torch's antialiased bilinear on the decoded array), the flip on the small uint8
  crop; uint8 images are collated and each batch converted to float and normalised at once
  (``trainer.data.BatchTransform`` with ``trainer.transforms.ScaledNormalize``).
* datamodule, full decode: the same with ``fast_decode=False``: every JPEG decoded at full
  size and the crop done on the tensor, as the plain loader does (the decoding's share).
* datamodule, cached: the same with ``cache_images=True``: the warm-up pass decodes every
  image once and keeps it (uint8, at the reduced scale); the measured passes only transform.

Pixels: the mean absolute difference, in 0-255 levels, between the DataModule's training crops
(same seeds) and Pillow's full decode of each photo with the same crop and one antialiased
bilinear resize (what the plain loader computes), over every training photo once; and, for
scale, the same for the full-decode DataModule (torchvision's tensor resize).

Each loader runs ``--epochs`` passes after one warm-up pass (page cache, imports), and the
loaders take turns ``--repeats`` times; printed: each run's images per wall second, and the
medians of images per wall second and per CPU second (``time.process_time``, which a shared
machine's load disturbs much less). The load average is printed with the figures.

Reproduce::

    .venv/bin/python -m benchmarks.dataloading [--root DIR] [--size 128] [--epochs 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

import numpy as np
from PIL import Image

from trainer.data import ImageDataModule, ImageListDataset
from trainer.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

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


def datamodule_loader(root: Path, size: int, batch_size: int, cache: bool = False, fast_decode: bool = True) -> DataLoader:
    dm = ImageDataModule(
        root=str(root), image_size=size, batch_size=batch_size, augment="light", num_workers=0, cache_images=cache,
        fast_decode=fast_decode,
    )
    dm.setup("fit")
    return dm.train_dataloader()


def images_per_second(loader: DataLoader, epochs: int) -> tuple[float, float]:
    """``(images per wall second, images per CPU second)`` over ``epochs`` passes after a warm-up one.

    CPU seconds are ``time.process_time`` (this process, all threads; one here): on a shared
    machine they move much less with other processes' load than wall time does.
    """
    for _ in loader:  # warm-up pass
        pass
    images, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for batch, _targets in loader:
            images += len(batch)
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def pixel_differences(train_dir: Path, size: int) -> dict[str, float]:
    """Mean absolute difference (0-255 levels) of the folded and the full-decode training crops
    against Pillow's full decode + the same crop + ``resize(BILINEAR, box)``, every photo once."""
    paths = sorted(p for p in train_dir.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg"))
    transform = build_transform(size, "light", train=True)
    crop = transform.transforms[1]
    sides = {
        "folded": ImageListDataset(paths, [0] * len(paths), transform=transform, draft_size=size),
        "full decode": ImageListDataset(paths, [0] * len(paths), transform=transform),
    }
    differences: dict[str, list[float]] = {name: [] for name in sides}
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            full = image.convert("RGB")
        torch.manual_seed(i)
        p = crop.make_params([torch.empty(1, dtype=torch.uint8).expand(3, full.size[1], full.size[0])])
        flip = bool(torch.rand(1) < transform.transforms[2].p)  # the draws in the transform's order
        box = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
        reference = full.resize((size, size), Image.Resampling.BILINEAR, box=box)
        if flip:
            reference = reference.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        reference = np.asarray(reference).astype(np.int16)
        for name, dataset in sides.items():
            torch.manual_seed(i)
            image, _ = dataset.load(i)
            differences[name].append(float(np.abs(image.permute(1, 2, 0).numpy().astype(np.int16) - reference).mean()))
    return {name: statistics.mean(values) for name, values in differences.items()} | {
        f"{name} max": max(values) for name, values in differences.items()
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset with a train/ folder")
    parser.add_argument("--size", type=int, default=128, help="network input side, pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="measured passes per loader")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of every loader")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core each; the loaders' transforms would otherwise spread
    torch.manual_seed(0)

    print(f"training images of {args.root}, {args.size} px, batch {args.batch_size}, 1 thread, num_workers=0")
    print(f"load average before: {load_average()} ({os.cpu_count()} cores)")
    # Interleaved --repeats times, so that a change in the machine's load hits all alike.
    loaders = {
        "plain ImageFolder + PIL transforms": lambda: plain_loader(args.root / "train", args.size, args.batch_size),
        "ImageDataModule (crop folded into decode)": lambda: datamodule_loader(args.root, args.size, args.batch_size),
        "ImageDataModule, cache_images=true": lambda: datamodule_loader(args.root, args.size, args.batch_size, True),
        "ImageDataModule, fast_decode=false": lambda: datamodule_loader(args.root, args.size, args.batch_size, fast_decode=False),
    }
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            rates[name].append(images_per_second(make(), args.epochs))
    print(f"load average after: {load_average()}")
    print()
    print("| loader | images/s per core, wall (runs) | median wall | median per CPU second |")
    print("|---|---:|---:|---:|")
    medians = {}
    for name, values in rates.items():
        medians[name] = (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        print(f"| {name} | {' / '.join(f'{v[0]:.0f}' for v in values)} | {medians[name][0]:.0f} | {medians[name][1]:.0f} |")
    (plain_wall, plain_cpu), *ours = medians.values()
    print(
        f"\nspeed-up over plain (medians): {ours[0][0] / plain_wall:.2f}x wall, {ours[0][1] / plain_cpu:.2f}x CPU decoding "
        f"every epoch; {ours[1][0] / plain_wall:.2f}x wall, {ours[1][1] / plain_cpu:.2f}x CPU cached; "
        f"{ours[2][0] / plain_wall:.2f}x wall, {ours[2][1] / plain_cpu:.2f}x CPU with full decoding"
    )
    pixels = pixel_differences(args.root / "train", args.size)
    print(
        f"pixels against Pillow's full decode + crop + resize (mean absolute difference, 0-255 levels, "
        f"mean / max per photo): folded {pixels['folded']:.2f} / {pixels['folded max']:.2f}, "
        f"full decode {pixels['full decode']:.2f} / {pixels['full decode max']:.2f}"
    )

if __name__ == "__main__":
    main()
