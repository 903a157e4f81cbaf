"""The datamodule reads every dataset layout of docs/dataset.md and yields normalised batches."""

from __future__ import annotations

import hashlib

import pytest
import torch
from trainer_testkit import CLASSES, draw_image, write_image_folder

from torch.utils.data import DataLoader

from trainer.data import BatchTransform, ImageDataModule, _Loaded, scan_dataset
from trainer.errors import UserError
from trainer.transforms import AUGMENTATIONS, build_transform


def datamodule(root, **kwargs):
    kwargs = {"image_size": 32, "batch_size": 4, "num_workers": 0} | kwargs
    return ImageDataModule(root=str(root), **kwargs)


def test_catalog_reads_stored_rows_only_and_skips_missing_files(catalog_dataset, caplog):
    records = scan_dataset(catalog_dataset)
    assert len(records) == 30  # the rejected and duplicate rows are not images
    victim = records[0].path
    victim.unlink()
    records = scan_dataset(catalog_dataset)
    assert len(records) == 29 and victim not in {r.path for r in records}
    assert "no file" in caplog.text
    assert all(r.content_id == r.path.stem and r.phash for r in records)


def test_catalog_batches_are_normalised_images(catalog_dataset):
    dm = datamodule(catalog_dataset)
    assert dm.classes == sorted(CLASSES) and dm.num_classes == 3
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.int64 and set(targets.tolist()) <= {0, 1, 2}
    assert images.min() < 0 < images.max()  # ImageNet-normalised, not [0, 1]
    assert sum(len(ds) for ds in dm.datasets.values()) == 30


def test_image_folder_ignores_dot_folders_and_hashes_bytes(folder_dataset):
    (folder_dataset / ".trash").mkdir()
    (folder_dataset / ".trash" / "x.png").write_bytes(draw_image("circle", 99))
    (folder_dataset / "circle" / "notes.txt").write_text("not an image")
    records = scan_dataset(folder_dataset)
    assert {r.label for r in records} == set(CLASSES) and len(records) == 30
    record = records[0]
    assert record.content_id == hashlib.sha256(record.path.read_bytes()).hexdigest()
    assert record.phash is None


def test_given_train_val_layout_is_kept(tmp_path):
    root = tmp_path / "given"
    write_image_folder(root / "train", per_class=4)
    write_image_folder(root / "val", per_class=2)
    dm = datamodule(root)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["val"]) == 6
    assert not dm.has_test
    assert all(str(p).startswith(str(root / "val")) for p in dm.datasets["val"].paths)


def test_rgb_conversion_of_grey_and_palette_images(tmp_path):
    root = write_image_folder(tmp_path / "modes", per_class=6, classes=("a", "b"))
    from PIL import Image

    Image.new("L", (40, 30), 128).save(root / "a" / "grey.png")
    Image.new("P", (30, 40)).save(root / "b" / "palette.gif")
    Image.new("RGBA", (30, 40)).save(root / "b" / "alpha.png")
    dm = datamodule(root, val_fraction=0.3)
    dm.setup("fit")
    for ds in dm.datasets.values():
        for i in range(len(ds)):
            assert ds[i][0].shape == (3, 32, 32)


def test_tiny_dataset_fails_with_clear_error(tmp_path):
    root = write_image_folder(tmp_path / "tiny", per_class=1, classes=("a", "b"))
    with pytest.raises(UserError, match="split .* is empty"):
        datamodule(root, val_fraction=0.01).setup("fit")


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        scan_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        scan_dataset(tmp_path / "empty")


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_augmentation_presets_keep_shape(augment):
    from PIL import Image

    image = Image.new("RGB", (80, 50), (10, 200, 30))
    for train in (True, False):
        out = build_transform(48, augment, train=train)(image)
        assert out.shape == (3, 48, 48) and out.dtype == torch.float32


def test_unknown_augmentation_fails():
    with pytest.raises(ValueError, match="light"):
        build_transform(32, "heavy")


def test_cached_images_are_decoded_once_and_equal_to_uncached(folder_dataset):
    cached = datamodule(folder_dataset, cache_images=True, augment="none")
    plain = datamodule(folder_dataset, augment="none")
    cached.setup("fit")
    plain.setup("fit")
    expected = [image for image, _ in plain.datasets["val"]]
    first = [image for image, _ in cached.datasets["val"]]
    for path in cached.datasets["val"].paths:
        path.unlink()  # a second pass must not read the files again
    again = [image for image, _ in cached.datasets["val"]]
    assert len(cached.datasets["val"].cache) == len(first) > 0
    for a, b, c in zip(expected, first, again):
        assert torch.equal(b, c) and torch.allclose(a, b, atol=1e-5)  # PIL or tensor input: same batch


@pytest.mark.parametrize("augment", ["light", "seed"])
def test_loaders_normalise_whole_batches_to_the_values_of_single_items(folder_dataset, augment):
    """The loaders move uint8 images and convert them per batch (BatchTransform): the same
    values as ``dataset[i]``, which converts its one image."""
    dm = datamodule(folder_dataset, augment=augment, batch_size=64)
    dm.setup("fit")
    val = dm.datasets["val"]
    image, _ = val.load(0)
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.dtype == torch.float32 and len(images) == len(val)
    assert torch.equal(images, torch.stack([val[i][0] for i in range(len(val))]))
    assert targets.tolist() == val.targets
    # Augmented: the same random draws, in the same order, give the same batch either way.
    train = dm.datasets["train"]
    torch.manual_seed(3)
    batched, _ = next(iter(DataLoader(_Loaded(train), batch_size=64, collate_fn=BatchTransform(train.batch_transform))))
    torch.manual_seed(3)
    single, _ = next(iter(DataLoader(train, batch_size=64)))
    assert batched.dtype == torch.float32 and torch.equal(batched, single)


def test_full_decode_option_neither_drafts_nor_folds(folder_dataset):
    dm = datamodule(folder_dataset, fast_decode=False)
    dm.setup("fit")
    assert dm.datasets["train"].draft_size is None and dm.datasets["train"]._crop is None
    fast = datamodule(folder_dataset)
    fast.setup("fit")
    assert fast.datasets["train"].draft_size == 32 and fast.datasets["train"]._crop is not None
