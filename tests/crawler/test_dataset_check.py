"""`python -m crawler.dataset check/export`: finds every inconsistency, repairs safely."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from crawler_testkit import encode, picture

from crawler.catalog import Catalog
from crawler.dataset import check, main

REPO = Path(__file__).resolve().parents[2]


def add_stored(catalog: Catalog, root: Path, label: str, data: bytes, ext: str = "png") -> str:
    path = f"{label}/{hashlib.sha256(data).hexdigest()}.{ext}"
    (root / label).mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)
    catalog.insert({"label": label, "status": "stored", "path": path, "sha256": hashlib.sha256(data).hexdigest()})
    return path


def build_dataset(root: Path) -> dict[str, str]:
    with Catalog(root) as catalog:
        paths = {name: add_stored(catalog, root, "cats", encode(picture(seed), "PNG")) for seed, name in enumerate(
            ["good", "missing", "tampered"]
        )}
        html = b"<html>not an image</html>"
        paths["undecodable"] = add_stored(catalog, root, "cats", html, "jpg")
        catalog.insert({"label": "cats", "status": "rejected", "reason": "http_404"})
    return paths


def test_consistent_dataset_passes(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        add_stored(catalog, tmp_path, "cats", encode(picture(1), "PNG"))
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "img-x.part").write_bytes(b"half")  # a killed crawl's leftover
    assert main(["check", str(tmp_path)]) == 0


def test_every_problem_is_found_and_repaired(tmp_path: Path) -> None:
    paths = build_dataset(tmp_path)
    (tmp_path / paths["missing"]).unlink()
    (tmp_path / paths["tampered"]).write_bytes(encode(picture(9), "PNG"))
    (tmp_path / "cats" / "stray.jpg").write_bytes(encode(picture(8), "JPEG"))
    problems, _ = check(tmp_path)
    assert {(p.kind, p.path) for p in problems} == {
        ("missing_file", paths["missing"]),
        ("hash_mismatch", paths["tampered"]),
        ("undecodable", paths["undecodable"]),
        ("orphan_file", "cats/stray.jpg"),
    }
    assert main(["check", str(tmp_path)]) == 1
    assert main(["check", str(tmp_path), "--repair"]) == 0
    assert main(["check", str(tmp_path)]) == 0
    assert (tmp_path / ".trash" / "cats" / "stray.jpg").exists()  # moved aside, never deleted
    assert (tmp_path / paths["good"]).exists()
    with Catalog(tmp_path) as catalog:
        reasons = sorted(r["reason"] for r in catalog.rows("status = 'rejected'"))
    assert reasons == ["hash_mismatch", "http_404", "missing_file", "undecodable"]


def test_export_command_writes_csv(tmp_path: Path) -> None:
    build_dataset(tmp_path)
    out = tmp_path / "export.csv"
    result = subprocess.run(
        [sys.executable, "-m", "crawler.dataset", "export", str(tmp_path), "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(out.read_text(encoding="utf-8").strip().splitlines()) == 6


# -- dedupe's promises (issue 13 item 4) ------------------------------------------------------


def stored_with_hashes(catalog: Catalog, root: Path, seed: int, fmt: str = "PNG") -> str:
    """Store picture ``seed`` with the crawl's hashes of its bytes (pdq, the default)."""
    from crawler.images.decode import verify_image
    from crawler.images.hashing import hashes_of

    data = encode(picture(seed, (160, 120)), fmt)
    path = f"cats/{hashlib.sha256(data).hexdigest()}.{fmt.lower()}"
    (root / "cats").mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)
    hashes = hashes_of(verify_image(data).image)
    catalog.insert({
        "label": "cats", "status": "stored", "path": path, "sha256": hashlib.sha256(data).hexdigest(),
        "pdq": hashes["pdq"], "pdq_quality": hashes["pdq_quality"], "phash": hashes["phash"],
    })
    return path


def test_a_duplicate_naming_no_stored_image_is_found_and_re_pointed(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        kept = add_stored(catalog, tmp_path, "cats", encode(picture(1), "PNG"))
        old = encode(picture(2), "PNG")
        old_sha = hashlib.sha256(old).hexdigest()
        # What an older version left: the replaced row points at the new image, but a row
        # that named the replaced one still names its (now trashed) file.
        catalog.insert({"label": "cats", "status": "duplicate", "reason": "near", "sha256": old_sha, "duplicate_of": kept})
        dangling = catalog.insert({"label": "cats", "status": "duplicate", "reason": "near", "duplicate_of": f"cats/{old_sha}.png"})
        catalog.insert({"label": "cats", "status": "duplicate", "reason": "exact", "duplicate_of": kept})  # fine
    problems, _ = check(tmp_path)
    assert [(p.kind, p.path, p.row_id) for p in problems] == [("dangling_duplicate", f"cats/{old_sha}.png", dangling)]
    assert main(["check", str(tmp_path), "--repair"]) == 0
    with Catalog(tmp_path) as catalog:
        assert catalog.get(dangling)["duplicate_of"] == kept
    assert check(tmp_path)[0] == []


def test_duplicates_of_a_lost_image_follow_it_in_one_repair(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        lost = add_stored(catalog, tmp_path, "cats", encode(picture(1), "PNG"))
        kept = add_stored(catalog, tmp_path, "cats", encode(picture(2), "PNG"))
        of_lost = catalog.insert({"label": "cats", "status": "duplicate", "reason": "near", "duplicate_of": lost})
        of_kept = catalog.insert({"label": "cats", "status": "duplicate", "reason": "exact", "duplicate_of": kept})
    (tmp_path / lost).unlink()
    assert [p.kind for p in check(tmp_path)[0]] == ["missing_file"]
    assert main(["check", str(tmp_path), "--repair"]) == 0  # consistent after one repair
    with Catalog(tmp_path) as catalog:
        assert (catalog.get(of_lost)["status"], catalog.get(of_lost)["reason"]) == ("rejected", "missing_file")
        assert catalog.get(of_kept)["status"] == "duplicate"
    assert check(tmp_path)[0] == []


def test_a_stored_file_also_in_the_trash_is_reported(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        path = add_stored(catalog, tmp_path, "cats", encode(picture(3), "PNG"))
    (tmp_path / ".trash" / "cats").mkdir(parents=True)
    (tmp_path / ".trash" / path).write_bytes((tmp_path / path).read_bytes())
    problems, _ = check(tmp_path)
    assert [(p.kind, p.path) for p in problems] == [("stored_and_trashed", path)]
    assert main(["check", str(tmp_path)]) == 1
    assert main(["check", str(tmp_path), "--repair"]) == 1  # a person's call: reported, never deleted
    assert (tmp_path / ".trash" / path).exists() and (tmp_path / path).exists()


def test_stored_pairs_within_the_duplicate_threshold_are_reported(tmp_path: Path) -> None:
    with Catalog(tmp_path) as catalog:
        first = stored_with_hashes(catalog, tmp_path, 4)
        stored_with_hashes(catalog, tmp_path, 5)  # another picture: fine
        twin = stored_with_hashes(catalog, tmp_path, 4, "JPEG")  # the same picture again, as JPEG
    problems, _ = check(tmp_path)
    assert [(p.kind, p.path) for p in problems] == [("near_duplicate_stored", twin)]
    assert f"bits (pdq) from {first}" in problems[0].detail
