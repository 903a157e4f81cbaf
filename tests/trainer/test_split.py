"""The split: deterministic, stable as the dataset grows, near-duplicate groups never straddle it."""

from __future__ import annotations

from collections import defaultdict

import pytest
from trainer_testkit import CLASSES, write_catalog_dataset

from trainer.data import ImageDataModule
from trainer.split import near_duplicate_groups, split_items


def datamodule(root, **kwargs):
    return ImageDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, **kwargs)


def splits_by_path(dm):
    return {record.path: split for record, split in zip(dm.records, dm.split_of_records())}


def test_split_is_deterministic_and_seeded(catalog_dataset):
    first = splits_by_path(datamodule(catalog_dataset))
    assert first == splits_by_path(datamodule(catalog_dataset))
    assert set(first.values()) == {"train", "val"}
    assert first != splits_by_path(datamodule(catalog_dataset, seed=7))


def test_split_is_stable_when_images_are_added(tmp_path):
    root = tmp_path / "grow"
    write_catalog_dataset(root, per_class=10)
    before = splits_by_path(datamodule(root))
    write_catalog_dataset(root, per_class=10, start=10)
    after = splits_by_path(datamodule(root))
    assert len(after) == 2 * len(before)
    assert {path: after[path] for path in before} == before


def test_test_fraction_only_takes_from_train(catalog_dataset):
    without = splits_by_path(datamodule(catalog_dataset))
    with_test = splits_by_path(datamodule(catalog_dataset, test_fraction=0.3))
    assert "test" in with_test.values()
    for path, split in with_test.items():
        if split == "val":
            assert without[path] == "val"
        if without[path] == "val":
            assert split == "val"


def group_phash(group: int) -> str:
    return f"{(group * 0x9E3779B97F4A7C15) % 2**64:016x}"


def test_equal_phash_groups_never_straddle_splits(tmp_path):
    root = tmp_path / "twins"
    # Four images in a row share a perceptual hash: one group of near-duplicates.
    write_catalog_dataset(root, per_class=16, phash=lambda label, i: group_phash(CLASSES.index(label) * 100 + i // 4))
    dm = datamodule(root, val_fraction=0.3, near_duplicate_distance=0)
    groups = defaultdict(set)
    for record, split in zip(dm.records, dm.split_of_records()):
        groups[record.phash].add(split)
    assert all(len(splits) == 1 for splits in groups.values())
    assert {split for splits in groups.values() for split in splits} == {"train", "val"}
    # Without grouping the same images would straddle: the test has teeth.
    naive = split_items([r.content_id for r in dm.records], seed=42, val_fraction=0.3)
    naive_groups = defaultdict(set)
    for record, split in zip(dm.records, naive):
        naive_groups[record.phash].add(split)
    assert any(len(splits) > 1 for splits in naive_groups.values())


def test_hashes_within_hamming_distance_are_grouped_transitively():
    base = 0x0123456789ABCDEF
    hashes = [f"{base:016x}", f"{base ^ 0b11:016x}", f"{base ^ 0b11 ^ (1 << 40):016x}", f"{~base % 2**64:016x}", None]
    roots = near_duplicate_groups(hashes, max_distance=2)
    assert roots[0] == roots[1] == roots[2]  # 0~1 (2 bits), 1~2 (1 bit); 0 and 2 are 3 bits apart
    assert len({roots[0], roots[3], roots[4]}) == 3
    assert near_duplicate_groups(hashes, max_distance=0)[:3] == [0, 1, 2]


@pytest.mark.parametrize("distance", [0, 3, 8])
def test_multi_index_grouping_matches_brute_force(distance):
    import random

    rng = random.Random(distance)
    values = [rng.getrandbits(64) for _ in range(40)]
    values += [v ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for v in values[:20]]
    roots = near_duplicate_groups([f"{v:016x}" for v in values], max_distance=distance)
    parent = list(range(len(values)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(values)):
        for j in range(i):
            if (values[i] ^ values[j]).bit_count() <= distance:
                parent[find(i)] = find(j)
    for i in range(len(values)):
        for j in range(len(values)):
            assert (roots[i] == roots[j]) == (find(i) == find(j))
