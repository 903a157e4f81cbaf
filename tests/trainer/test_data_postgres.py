"""``data.catalog_url``: the trainer takes labels and splits from a crawl's PostgreSQL catalog.

The dataset is written as a crawl writes it (files by label, ``stored``/``rejected``/
``duplicate`` rows), its rows then put into a new database of a throwaway PostgreSQL cluster
through the crawler's own ``Catalog`` (skipped where PostgreSQL is not installed), and the
folder's ``catalog.sqlite`` removed, so only the database can tell the labels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_testkit import move_catalog_to_postgres

from trainer.data import ImageDataModule
from trainer.errors import UserError
from trainer.predict import expand_inputs
from trainer.train import train


def test_splits_and_labels_from_postgresql_match_the_sqlite_catalog(catalog_dataset: Path, postgres_url: str) -> None:
    args = {"image_size": 32, "batch_size": 4, "num_workers": 0, "val_fraction": 0.3}
    from_sqlite = ImageDataModule(root=str(catalog_dataset), **args)
    expected = [(r.label, r.path.name, split) for r, split in zip(from_sqlite.records, from_sqlite.split_of_records())]
    move_catalog_to_postgres(catalog_dataset, postgres_url)
    from_postgres = ImageDataModule(root=str(catalog_dataset), catalog_url=postgres_url, **args)
    got = [(r.label, r.path.name, split) for r, split in zip(from_postgres.records, from_postgres.split_of_records())]
    assert got == expected and len(got) == 30  # stored rows only, split alike
    assert from_postgres.classes == from_sqlite.classes
    # Without the URL the folder is a plain ImageFolder now: same labels, but no phash groups.
    assert all(r.phash is None for r in ImageDataModule(root=str(catalog_dataset), **args).records)


def test_one_training_step_from_a_postgresql_catalogued_dataset(make_cfg, catalog_dataset: Path, postgres_url: str) -> None:
    move_catalog_to_postgres(catalog_dataset, postgres_url)
    cfg = make_cfg("debug=fdr", "data.image_size=32", "data.batch_size=4", f"data.catalog_url={postgres_url}",
                   data_root=catalog_dataset)
    summary = train(cfg)
    assert summary.num_classes == 3
    assert summary.val_loss > 0


def test_an_unreachable_catalog_url_is_a_user_error(catalog_dataset: Path) -> None:
    dm = ImageDataModule(root=str(catalog_dataset), catalog_url="postgresql://u:hunter2@127.0.0.1:1/x", num_workers=0)
    with pytest.raises(UserError, match=r"cannot read the catalog at data.catalog_url=postgresql://u:\*\*\*@127.0.0.1:1/x") as caught:
        dm.records  # noqa: B018 (the first use scans)
    assert "hunter2" not in str(caught.value)


def test_predict_reads_the_labels_of_a_postgresql_catalogued_dataset(catalog_dataset: Path, postgres_url: str) -> None:
    expected = sorted((i.shown, i.label) for i in expand_inputs([catalog_dataset]))
    move_catalog_to_postgres(catalog_dataset, postgres_url)
    assert sorted((i.shown, i.label) for i in expand_inputs([catalog_dataset], postgres_url)) == expected
    assert len(expected) == 30  # stored rows only: the rejected and duplicate rows name no file
