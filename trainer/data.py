"""LightningDataModule over a dataset folder (the contract in docs/dataset.md).

Three layouts are read, in this order of preference:

1. A catalogued dataset: ``catalog.sqlite`` in the folder, or the PostgreSQL catalog a crawl
   wrote with ``CATALOG_URL`` (``data.catalog_url``); the images are its ``stored`` rows (rows
   whose file has gone missing are skipped with a warning). Content id: the file stem (the
   SHA-256 of the stored bytes); perceptual hash: the ``phash`` column.
2. A folder already split by hand: ``train/`` and ``val/`` (and optionally ``test/``), each in
   ImageFolder layout, taken as given (the hymenoptera dataset has this form).
3. A plain ImageFolder: one subfolder per label. Content id: the file stem when it already is a
   SHA-256, else the SHA-256 of the file bytes.

Folders whose names start with ``.`` (``.tmp/``, ``.trash/``) are never labels. Class names are
sorted; their count, ``num_classes``, is what the model's head is built with.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from trainer.decoding import ResizedCropDecoder
from trainer.errors import UserError
from trainer.split import TEST, TRAIN, VAL, split_items
from trainer.transforms import ScaledNormalize, build_transform

logger = logging.getLogger(__name__)

CATALOG = "catalog.sqlite"
#: ``class_weighting`` choices: nothing, class-weighted cross-entropy, or a class-balanced sampler.
CLASS_WEIGHTINGS = ("none", "loss", "sampler")
#: File suffixes read from plain ImageFolder datasets (the formats docs/dataset.md allows, plus jpeg).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset.

    Attributes:
        path: absolute file path.
        label: class name (the label folder).
        content_id: stable id of the bytes (SHA-256 hex); the split is decided on it.
        phash: perceptual hash (16 hex chars) when the catalog has one, else ``None``.
        split: ``"train"``/``"val"``/``"test"`` when the folder layout fixes it, else ``None``.
    """

    path: Path
    label: str
    content_id: str
    phash: str | None = None
    split: str | None = None


def scan_dataset(root: str | Path, catalog_url: str | None = None) -> list[ImageRecord]:
    """List the images of dataset folder ``root`` (any of the three layouts in the module doc;
    with ``catalog_url``, a catalogued dataset whose catalog is that PostgreSQL database).

    Raises:
        UserError: ``root`` is not a directory, no image was found, or the catalog database
            cannot be read.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(
            f"dataset folder {root} {what} (set data.root to a folder of label subfolders of images, "
            "e.g. a crawl's DATASET_DIR; relative paths start from the current directory)"
        )
    if catalog_url:
        records = _scan_postgres_catalog(root, catalog_url)
    elif (root / CATALOG).is_file():
        records = _scan_catalog(root)
    elif (root / TRAIN).is_dir() and (root / VAL).is_dir():
        records = [
            record
            for split in (TRAIN, VAL, TEST)
            if (root / split).is_dir()
            for record in _scan_image_folder(root / split, split=split)
        ]
    else:
        records = _scan_image_folder(root)
    if not records:
        raise UserError(
            f"no images found in {root} (data.root must hold {CATALOG} or one subfolder of images per label, "
            f"or train/ and val/ folders of such subfolders; image files: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return records


def label_folders(root: str | Path, catalog_url: str | None = None) -> list[str]:
    """Names of the label subfolders of a folder dataset, with or without images (sorted).

    For a ``train/`` + ``val/`` layout, the union over the split folders; for a catalogued
    dataset (``catalog.sqlite``, or a ``catalog_url``), none (its labels are the catalog's).
    """
    root = Path(root).expanduser().resolve()
    if catalog_url or (root / CATALOG).is_file():
        return []
    parents = [root / split for split in (TRAIN, VAL, TEST) if (root / split).is_dir()]
    if not ((root / TRAIN).is_dir() and (root / VAL).is_dir()):
        parents = [root]
    return sorted({p.name for parent in parents for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")})


def check_classes(records: list[ImageRecord], root: str | Path, catalog_url: str | None = None) -> None:
    """Refuse a dataset that cannot train a classifier as its folders say.

    A label folder without images is refused, as torchvision's ``ImageFolder`` does
    (``allow_empty=False``): the user made the folder for a class, and a model trained without
    it, silently, is not what was asked for.

    Raises:
        UserError: a label folder has no images, or there are fewer than two classes; the
            message names the classes found with their image counts.
    """
    counts = Counter(record.label for record in records)
    empty = [name for name in label_folders(root, catalog_url) if not counts[name]]
    found = ", ".join(f"{name} {counts[name]}" for name in sorted({*counts, *empty}))
    if empty:
        folders = ", ".join(f"{name}/" for name in empty)
        raise UserError(
            f"label folder{'s' if len(empty) > 1 else ''} {folders} in {root} "
            f"{'have' if len(empty) > 1 else 'has'} no images; images per class: {found} "
            f"(add images to {folders} or remove {'them' if len(empty) > 1 else 'it'} to train without that class)"
        )
    if len(counts) < 2:
        raise UserError(
            f"{root} has {len(counts)} class, a classifier needs at least 2; images per class: {found} "
            "(add a subfolder of images for each other label, e.g. crawl another label into the same DATASET_DIR)"
        )


#: The catalog's stored images, as both catalog engines answer it (docs/dataset.md).
_STORED_SQL = "SELECT label, path, sha256, phash FROM images WHERE status = 'stored' ORDER BY id"


def _scan_catalog(root: Path) -> list[ImageRecord]:
    # Read-only URI: the trainer never writes the crawler's catalog, even by accident.
    connection = sqlite3.connect(f"file:{root / CATALOG}?mode=ro", uri=True)
    try:
        rows = connection.execute(_STORED_SQL).fetchall()
    finally:
        connection.close()
    return _stored_records(root, rows)


def _scan_postgres_catalog(root: Path, url: str) -> list[ImageRecord]:
    """The stored rows of the PostgreSQL catalog at ``url`` (read-only transactions), with
    their files under ``root``.

    Raises:
        UserError: the database cannot be reached or has no catalog.
    """
    import psycopg

    try:
        # Read-only session: the trainer never writes the crawler's catalog, even by accident.
        with psycopg.connect(url, options="-c default_transaction_read_only=on", connect_timeout=30) as connection:
            rows = connection.execute(_STORED_SQL).fetchall()
    except psycopg.Error as exc:
        where = re.sub(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@/]*@", r"\1***@", url, flags=re.IGNORECASE)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot read the catalog at data.catalog_url={where}: {reason.replace(url, where)} "
            "(give the CATALOG_URL the crawl wrote to: postgresql://user[:password]@host:port/dbname)"
        ) from None
    return _stored_records(root, rows)


def _stored_records(root: Path, rows: list[tuple]) -> list[ImageRecord]:
    records, missing = [], 0
    for label, rel_path, _sha256, phash in rows:
        path = root / rel_path
        if not path.is_file():
            missing += 1
            continue
        records.append(ImageRecord(path, label, path.stem, phash or None))
    if missing:
        logger.warning("%d stored catalog rows have no file in %s; skipped", missing, root)
    return records


def _scan_image_folder(root: Path, split: str | None = None) -> list[ImageRecord]:
    records = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(label_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith("."):
                records.append(ImageRecord(path, label_dir.name, _content_id(path), split=split))
    return records


def _content_id(path: Path) -> str:
    stem = path.stem.lower()
    if _SHA256_HEX.fullmatch(stem):
        return stem
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ImageListDataset(Dataset):
    """Map-style dataset over image files.

    Item ``i`` is ``(image, target)``: ``image`` is whatever ``transform`` makes of the RGB PIL
    image (``(3, H, W)`` float with the default transforms), ``target`` the class index (int).
    JPEGs are decoded at reduced scale (PIL ``draft``) when still at least ``draft_size``
    pixels per side, which is several times faster for large photos. With ``cache``, each image
    is decoded once and kept as a ``(3, H, W)`` uint8 tensor at that reduced scale (about
    ``3 * H * W`` bytes each, per dataloader worker); ``transform`` then gets the tensor.

    A ``transform`` that starts ``ToImage, RandomResizedCrop`` (the ``light`` training preset)
    is folded into decoding when not caching and ``draft_size`` is set
    (``trainer.decoding.ResizedCropDecoder``): the crop is drawn first (the transform's own
    ``make_params``, so the same distribution and RNG draws), a JPEG is decoded by libjpeg-turbo
    at the smallest M/8 scale that keeps the crop at least the output size, and torch's
    antialiased bilinear resize (torchvision's) scales the crop; a ``RandomHorizontalFlip``
    right after it is done on the small crop. The rest of the transform gets the ``(3, size,
    size)`` uint8 tensor. This skips the full-size decode and tensor and their separate crop and
    resize passes (1.8x ``ImageFolder``'s images per CPU second: ``benchmarks.dataloading``).

    A ``transform`` that ends ``ToDtype(float32, scale=True), Normalize`` (every preset of
    ``trainer.transforms.build_transform``) is split there: :meth:`load` returns the image
    before those two steps (uint8 with the presets) and ``batch_transform`` does them
    (``trainer.transforms.ScaledNormalize``, the two fused), so that
    a loader can convert and normalise whole batches (``ImageDataModule`` does, through
    :class:`BatchTransform`); ``dataset[i]`` applies them to the one image, the same values.
    """

    def __init__(
        self,
        paths: list[Path],
        targets: list[int],
        transform: Callable | None = None,
        draft_size: int | None = None,
        cache: bool = False,
    ) -> None:
        self.paths = paths
        self.targets = targets
        self.transform = transform
        self.draft_size = draft_size
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        fold = draft_size and not cache
        self._crop, rest = _leading_resized_crop(transform) if fold else (None, None)
        #: The per-image steps (after the folded crop, if any) and the per-batch ones.
        self._image_transform, self.batch_transform = _trailing_normalization(rest if self._crop else transform)
        self._decode_crop: ResizedCropDecoder | None = None
        if self._crop is not None:
            flip, self._image_transform = _leading_flip(self._image_transform)
            self._decode_crop = ResizedCropDecoder(self._crop, flip)

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            if self.draft_size:
                image.draft("RGB", (self.draft_size, self.draft_size))
            return image.convert("RGB")

    def load(self, index: int) -> tuple[Any, int]:
        """``(image, target)`` before ``batch_transform``: ``(3, H, W)`` uint8 with the presets."""
        if self._decode_crop is not None:
            image = self._decode_crop(self.paths[index])
        elif self.cache is None:
            image = self._decode(index)
        else:
            image = self.cache.get(index)
            if image is None:
                image = self.cache[index] = pil_to_tensor(self._decode(index))
        if self._image_transform is not None:
            image = self._image_transform(image)
        return image, self.targets[index]

    def __getitem__(self, index: int):
        image, target = self.load(index)
        if self.batch_transform is not None:
            image = self.batch_transform(image)
        return image, target


def _leading_resized_crop(transform: Callable | None) -> tuple[v2.RandomResizedCrop | None, Callable | None]:
    """``(crop, rest)`` when ``transform`` is a ``v2.Compose`` starting ``ToImage,
    RandomResizedCrop`` (bilinear, antialiased), so that the crop can be done while decoding;
    else ``(None, None)``."""
    steps = getattr(transform, "transforms", None)
    if (
        isinstance(transform, v2.Compose)
        and len(steps) >= 2
        and isinstance(steps[0], v2.ToImage)
        and isinstance(steps[1], v2.RandomResizedCrop)
        and getattr(steps[1].interpolation, "value", steps[1].interpolation) == "bilinear"  # enum or its name
        and steps[1].antialias
        and len(steps[1].size) == 2
    ):
        return steps[1], v2.Compose(steps[2:])
    return None, None


def _leading_flip(transform: Callable | None) -> tuple[v2.RandomHorizontalFlip | None, Callable | None]:
    """``(flip, rest)`` when ``transform`` is a ``v2.Compose`` starting ``RandomHorizontalFlip``
    (done on the decoded crop by ``ResizedCropDecoder``), ``rest`` ``None`` when nothing is
    left; else ``(None, transform)``."""
    steps = getattr(transform, "transforms", None)
    if isinstance(transform, v2.Compose) and steps and isinstance(steps[0], v2.RandomHorizontalFlip):
        return steps[0], v2.Compose(steps[1:]) if len(steps) > 1 else None
    return None, transform


def _trailing_normalization(transform: Callable | None) -> tuple[Callable | None, ScaledNormalize | None]:
    """``(head, tail)`` of a ``v2.Compose`` ending ``ToDtype(float32, scale=True), Normalize``:
    ``tail`` does those two steps (fused, ``ScaledNormalize``), on a batch as on one image; else
    ``(transform, None)``."""
    steps = getattr(transform, "transforms", None)
    if (
        isinstance(transform, v2.Compose)
        and len(steps) >= 2
        and isinstance(steps[-2], v2.ToDtype)
        and steps[-2].dtype == torch.float32
        and steps[-2].scale
        and isinstance(steps[-1], v2.Normalize)
    ):
        head = v2.Compose(steps[:-2]) if len(steps) > 2 else None
        return head, ScaledNormalize(steps[-1].mean, steps[-1].std)
    return transform, None


class BatchTransform:
    """``collate_fn``: ``default_collate``, then ``transform`` on the ``(N, C, H, W)`` image batch.

    One conversion and normalisation per batch instead of one per image (10 % more training
    images per CPU second on hymenoptera at 128 px, one core: 528 against 479), and uint8
    images, a quarter of float's bytes, cross from the dataloader workers.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, batch: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = default_collate(batch)
        return self.transform(images), targets


class _Loaded(Dataset):
    """``dataset``'s items before its ``batch_transform`` (``ImageListDataset.load``)."""

    def __init__(self, dataset: ImageListDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset.load(index)


class ImageDataModule(pl.LightningDataModule):
    """Train/val(/test) dataloaders over a dataset folder, split from image content.

    The split is deterministic and stable as the dataset grows (``trainer.split``): a hash of each
    image's content id salted by ``seed`` decides it, and near-duplicate groups (perceptual hashes
    within ``near_duplicate_distance`` bits, catalogued datasets only) are split as one.
    A ``train/`` + ``val/`` folder layout is taken as given instead.

    Args:
        root: the dataset folder (``DATASET_DIR``).
        image_size: side of the square network input, pixels.
        batch_size: images per batch (per device).
        val_fraction: expected share of images in validation (0-1).
        test_fraction: expected share in test; 0 means no test split.
        seed: salt of the split hash; changing it reshuffles the split.
        augment: training augmentation preset, ``none``, ``light`` or ``seed``
            (``trainer.transforms.build_transform``).
        near_duplicate_distance: largest Hamming distance (bits of the 64-bit phash) at which two
            images count as near-duplicates and stay in one split.
        class_weighting: against class imbalance: ``none``; ``loss``, a cross-entropy weighted
            by ``class_weights`` (the module gets them as ``loss_weights``); or ``sampler``,
            training batches drawn with replacement by a ``WeightedRandomSampler`` so that every
            class is drawn equally often (an epoch keeps the training split's size).
        cache_images: keep every decoded image in memory (uint8, at the reduced decode scale:
            about ``3 * (2 * image_size)**2`` bytes per image at most, in each dataloader
            worker; use with ``persistent_workers``), so that only the first epoch decodes.
        fast_decode: decode JPEGs at reduced scale (PIL ``draft``, down to ``image_size``) and
            fold the training crop into decoding (libjpeg-turbo's M/8 scales, down to the
            crop's need: ``ImageListDataset``); ``False`` decodes every
            image at full size, as torchvision's ``ImageFolder`` does: slower, the same
            accuracy (``benchmarks.train_accuracy --full-decode``).
        num_workers, persistent_workers, pin_memory: passed to every ``DataLoader``.
        catalog_url: the PostgreSQL catalog of a crawl that wrote it there (``CATALOG_URL``,
            ``postgresql://user@host:port/dbname``); labels and splits come from its stored
            rows, the files from ``root``. Every process (each DDP rank) reads it; Lightning's
            distributed sampler gives each rank its share of the batches.

    Batches are ``(images, targets)``: ``(N, 3, image_size, image_size)`` float normalised with
    ImageNet statistics, and ``(N,)`` int64 class indices.

    Raises (from ``setup`` and the first use of ``records``, ``classes``, ``num_classes``):
        UserError: ``root`` is missing; no images; a label folder without images or fewer than
            two classes (``check_classes``); a split that must exist is empty (dataset too
            small). At construction: unknown ``class_weighting``.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        seed: int = 42,
        augment: str = "light",
        near_duplicate_distance: int = 4,
        class_weighting: str = "none",
        cache_images: bool = False,
        fast_decode: bool = True,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        catalog_url: str | None = None,
    ) -> None:
        super().__init__()
        if class_weighting not in CLASS_WEIGHTINGS:
            raise UserError(
                f"unknown data.class_weighting={class_weighting} (use one of: {', '.join(CLASS_WEIGHTINGS)})"
            )
        self.save_hyperparameters(logger=False)
        self._records: list[ImageRecord] | None = None
        self._splits: list[str] | None = None
        self.datasets: dict[str, ImageListDataset] = {}

    @property
    def records(self) -> list[ImageRecord]:
        """Every image of the dataset, scanned once (and checked: :func:`check_classes`)."""
        if self._records is None:
            records = scan_dataset(self.hparams.root, self.hparams.catalog_url)
            check_classes(records, self.hparams.root, self.hparams.catalog_url)
            self._records = records
        return self._records

    @property
    def classes(self) -> list[str]:
        """Class names, sorted; index ``i`` is target ``i``."""
        return sorted({record.label for record in self.records})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_of_records(self) -> list[str]:
        """The split of each of ``records``, in order (computed once)."""
        if self._splits is None:
            self._splits = self._compute_splits()
        return self._splits

    def _compute_splits(self) -> list[str]:
        records = self.records
        if all(record.split for record in records):
            return [record.split for record in records]
        hp = self.hparams
        return split_items(
            [record.content_id for record in records],
            [record.phash for record in records],
            seed=hp.seed,
            val_fraction=hp.val_fraction,
            test_fraction=hp.test_fraction,
            max_distance=hp.near_duplicate_distance,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        class_to_idx = {name: i for i, name in enumerate(self.classes)}
        splits = self.split_of_records()
        required = [TRAIN, VAL] + ([TEST] if hp.test_fraction > 0 or TEST in splits else [])
        for split in required:
            members = [record for record, s in zip(self.records, splits) if s == split]
            if not members:
                raise UserError(
                    f"the {split!r} split of {hp.root} is empty ({len(self.records)} images, "
                    f"data.val_fraction={hp.val_fraction}, data.test_fraction={hp.test_fraction}) "
                    "(add images, or raise the fraction)"
                )
            self.datasets[split] = ImageListDataset(
                [record.path for record in members],
                [class_to_idx[record.label] for record in members],
                transform=build_transform(hp.image_size, hp.augment, train=split == TRAIN),
                draft_size=hp.image_size if hp.fast_decode else None,
                cache=hp.cache_images,
            )
        counts = {split: Counter(ds.targets) for split, ds in self.datasets.items()}
        for split, count in counts.items():
            absent = [name for name, i in class_to_idx.items() if count[i] == 0]
            if absent:
                logger.warning("split %s has no images of class(es) %s", split, ", ".join(absent))
        logger.info(
            "dataset %s: %d classes; %s",
            hp.root,
            self.num_classes,
            ", ".join(f"{split} {len(ds)}" for split, ds in self.datasets.items()),
        )

    def split_sizes(self) -> dict[str, int]:
        """Images per split, e.g. ``{"train": 200, "val": 50}``; needs no ``setup``.

        Computed from the records, so it also holds in a launcher process whose ``setup`` ran
        in spawned workers (``ddp_spawn``).
        """
        counts = Counter(self.split_of_records())
        return {split: counts[split] for split in (TRAIN, VAL, TEST) if counts[split]}

    def class_counts(self) -> list[int]:
        """Training images per class, in target order; needs no ``setup``."""
        counts = Counter(record.label for record, s in zip(self.records, self.split_of_records()) if s == TRAIN)
        return [counts[name] for name in self.classes]

    def class_weights(self) -> list[float]:
        """Per-class weights ``n / (k * n_c)`` from the training split (``n`` images, ``k``
        classes, ``n_c`` of class ``c``): scikit-learn's ``"balanced"`` heuristic (King & Zeng
        2001). They average 1 over the training images; a class with no training image gets
        ``n / k``."""
        counts = self.class_counts()
        total, k = sum(counts), len(counts)
        return [total / (k * max(count, 1)) for count in counts]

    @property
    def loss_weights(self) -> list[float] | None:
        """``class_weights()`` for the cross-entropy when ``class_weighting`` is ``loss``, else ``None``."""
        return self.class_weights() if self.hparams.class_weighting == "loss" else None

    @property
    def has_test(self) -> bool:
        """Whether the dataset has a test split (``test_fraction > 0`` or a ``test/`` folder)."""
        return TEST in self.split_sizes()

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        hp = self.hparams
        dataset = self.datasets[split]
        sampler = None
        if train and hp.class_weighting == "sampler":
            weights = self.class_weights()
            # Seeded: a rerun draws the same batches. Under DDP Lightning shards the draws.
            sampler = WeightedRandomSampler(
                [weights[target] for target in dataset.targets],
                num_samples=len(dataset),
                replacement=True,
                generator=torch.Generator().manual_seed(hp.seed),
            )
        # Batches converted and normalised at once (BatchTransform); the same values as dataset[i].
        batched = dataset.batch_transform is not None
        return DataLoader(
            _Loaded(dataset) if batched else dataset,
            batch_size=hp.batch_size,
            collate_fn=BatchTransform(dataset.batch_transform) if batched else None,
            shuffle=train and sampler is None,
            sampler=sampler,
            # A ragged last training batch of one image breaks batch norm (and is a noisy step);
            # drop it, unless the training set is smaller than one batch.
            drop_last=train and len(dataset) >= hp.batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers and hp.num_workers > 0,
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(TRAIN, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(VAL)

    def test_dataloader(self) -> DataLoader:
        return self._loader(TEST)
