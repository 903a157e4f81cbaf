"""Benchmark: the crawl's near-duplicate decisions on real ground truth (issue 13), per kind of copy.

Files, each decoded the way a crawl decodes it (``verify_image``: EXIF orientation applied,
the canonical image of ``crawler.images.hashing.HASH_RECIPE``):

* ``../shared/real/neardup/pdq`` and ``.../augly`` with their ``ground_truth.json``: copies of
  a few originals, one row per kind; the other originals are negatives.
* ``exif``: 8 hymenoptera photos re-saved (JPEG q95) with an EXIF orientation tag: the same
  pixels shown turned (tags 3, 6, 8), or the pixels turned and a tag that undoes it.
* ``../shared/data/hymenoptera_data``: 397 distinct photos (any link among them is false).
* ``../shared/real/sites/bid`` and ``.../gaa`` (``ground_truth.json``): the full-size image of
  every distinct product or photo (any link among them is false), and their listing renditions
  (the shop's 533-px card image, the gallery's 150x125 thumbnail) as real copies.

What is measured is what a crawl decides: each file is hashed by ``hashes_of`` (the prepare
stage's call) and looked up in a real catalog (``crawler.catalog.Catalog`` in a temporary
folder) through ``crawler.images.index.catalog_index`` (``PdqCatalogIndex`` /
``CatalogHashIndex``, the dedupe stage's lookup), with the rule of ``crawler/settings.py``'s
``DEDUPE_DEFAULTS``. Per set, two runs:

* recall: the originals are stored one by one, then every copy is looked up (and not stored);
  a copy is caught when the match is its own original;
* false merges: every file (originals, then copies) is looked up and then stored, as a crawl
  that kept everything would see them; a match to a file of another group is a false merge.

Kinds marked ``-`` are not the same picture for a training set (``NOT_SAME``); recall is printed
over the counted kinds and over all. ``--margins`` prints the distances behind each threshold
(copies against distinct pairs, per set), from the same functions the index calls.

Reproduce::

    .venv/bin/python -m benchmarks.neardup_real --cache /tmp/neardup.pkl             # table
    .venv/bin/python -m benchmarks.neardup_real --cache /tmp/neardup.pkl --margins   # + margins
    taskset -c 0 .venv/bin/python -m benchmarks.neardup_real --cost                  # ms per image
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from crawler import settings as defaults
from crawler.catalog import Catalog
from crawler.hashindex import hamming
from crawler.images.decode import Rejected, verify_image
from crawler.images.hashing import VARIANTS, hash_recipe, hashes_of, image_hashes
from crawler.images.index import CatalogHashIndex, PdqCatalogIndex, catalog_index
from crawler.images.matching import WINDOW_LOOKS, WINDOW_PAIRS, DedupeRule, window_candidates
from crawler.images.pdq import DIHEDRAL_KINDS, FULL, aligned_difference, aligned_thumbnails, second_look, window_box

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NEARDUP = SHARED / "real" / "neardup"
SITES = SHARED / "real" / "sites"
HYMENOPTERA = SHARED / "data" / "hymenoptera_data"


def default_rule(hash_name: str) -> DedupeRule:
    """The crawl's rule for ``hash_name`` with ``crawler/settings.py``'s ``DEDUPE_DEFAULTS``."""
    values = defaults.DEDUPE_DEFAULTS[hash_name]
    return DedupeRule(hash_name=hash_name, **{k.removeprefix("DEDUPE_").lower(): v for k, v in values.items()})


RULE = default_rule("pdq")
# (column name, rule): the crawl's default and its parts turned off; the phash recipe.
METHODS: dict[str, DedupeRule] = {
    "pdq (default)": RULE,
    "pdq, no second look": replace(RULE, look_distance=0),
    "pdq, no phash windows": replace(RULE, window_distance=0),
    "phash recipe": default_rule("phash"),
    "plain phash": replace(default_rule("phash"), variant_distance=0),
}

# Kinds that are not the same picture for a training set, and why (README, issue 13 note).
NOT_SAME = {
    "crop (central 50%)": "a quarter of the area: a new framing (zoom) of the scene, as a "
    "random-resized-crop augmentation makes; issue 13 asks for 'cropped a little'",
    "overlay_onto_screenshot": "the photo fills ~15% of a UI screenshot: the picture is the screenshot",
    "overlay_onto_background_image (50% size onto an emoji)": "the photo is a quarter of an "
    "emoji picture: a new composite picture",
}


@dataclass
class Sample:
    dataset: str
    name: str
    group: str
    role: str  # original or copy
    kind: str
    body: bytes = field(repr=False)
    features: dict = field(default_factory=dict, repr=False)


# -- the files -------------------------------------------------------------------------------


def load_neardup(name: str) -> list[Sample]:
    truth = json.loads((NEARDUP / name / "ground_truth.json").read_text())
    return [
        Sample(name, e["file"], e["group"], e["role"], e["kind"], (NEARDUP / name / "files" / e["file"]).read_bytes())
        for e in truth["entries"]
    ]


def hymenoptera_files() -> list[Path]:
    return sorted(p for p in HYMENOPTERA.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def load_hymenoptera() -> list[Sample]:
    return [Sample("hymenoptera", str(p.relative_to(HYMENOPTERA)), str(p), "original", "original", p.read_bytes()) for p in hymenoptera_files()]


def _with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def load_exif(count: int = 8) -> list[Sample]:
    """Originals and EXIF copies: tag 3/6/8 on the same pixels (shown turned), or the pixels
    turned the other way with the tag that turns them back (shown as the original)."""
    samples = []
    for n, path in enumerate(hymenoptera_files()[::50][:count]):
        body = path.read_bytes()
        group = f"exif{n}"
        samples.append(Sample("exif", path.name, group, "original", "original", body))
        with Image.open(io.BytesIO(body)) as image:
            image = image.convert("RGB")
            tag = (3, 6, 8)[n % 3]
            samples.append(Sample("exif", f"{path.stem}-tag{tag}", group, "copy", f"EXIF tag {tag} on the same pixels (shown turned)", _with_orientation(image, tag)))
            inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[tag]
            samples.append(Sample("exif", f"{path.stem}-undo{tag}", group, "copy", "pixels turned + EXIF tag undoing it", _with_orientation(image.transpose(inverse), tag)))
    return samples


def load_site(name: str) -> list[Sample]:
    truth = json.loads((SITES / name / "ground_truth.json").read_text())
    samples, seen = [], set()
    kind = {"bid": "shop listing rendition (533 px)", "gaa": "gallery thumbnail (150x125)"}[name]
    for category in truth["categories"].values():
        for item in category["items"]:
            full = item["full_size_image"]
            if full in seen or not (SITES / name / "site" / full.lstrip("/")).exists():
                continue
            seen.add(full)
            samples.append(Sample(name, full, full, "original", "original", (SITES / name / "site" / full.lstrip("/")).read_bytes()))
            listing = SITES / name / "site" / item["listing_image"].lstrip("/")
            if listing.exists() and item["listing_image"] != full:
                samples.append(Sample(name, item["listing_image"], full, "copy", kind, listing.read_bytes()))
    return samples


def featurise(sample: Sample) -> None:
    """The hashes the prepare stage computes for ``sample``'s bytes, per recipe."""
    try:
        image = verify_image(sample.body).image
    except Rejected as exc:
        sample.features = {"rejected": exc.reason}
        return
    sample.features = {"pdq": hashes_of(image, "pdq"), "phash": image_hashes(image), "recipe": hash_recipe("pdq")}


# -- the crawl's decisions --------------------------------------------------------------------


def catalog_row(hashes: dict[str, Any], path: str, n: int) -> dict[str, Any]:
    """The ``images`` row the dedupe and store stages write for a stored picture's ``hashes``
    (``hashes_of``): the catalog columns, the window hashes and the look."""
    hashes = dict(hashes)
    row: dict[str, Any] = {"label": "x", "status": "stored", "path": path, "sha256": f"sha-{n}-{path}", "width": 1, "height": 1}
    row["phash"] = hashes.pop("phash")
    if FULL in hashes:
        row["pdq"] = hashes[FULL]
        for kind in DIHEDRAL_KINDS:  # query-only, never stored
            hashes.pop(kind)
        row["pdq_quality"] = hashes.pop("pdq_quality")
        row["look"] = hashes.pop("look")
    row["hashes"] = hashes
    return row


class Crawl:
    """A catalog in a temporary folder and the dedupe stage's index over it, for one rule."""

    def __init__(self, rule: DedupeRule) -> None:
        self.rule = rule
        self._tmp = tempfile.TemporaryDirectory()
        self.catalog = Catalog(self._tmp.name)
        self.index = catalog_index(self.catalog, rule)
        self.count = 0

    def find(self, hashes: dict[str, Any], sha: str) -> str | None:
        """The path of the stored picture the dedupe stage links ``hashes`` to, or ``None``."""
        self.index.refresh()
        if isinstance(self.index, PdqCatalogIndex):
            match = self.index.find(sha, hashes)
        else:
            assert isinstance(self.index, CatalogHashIndex)
            variants = {k: v for k, v in hashes.items() if k != "phash"} if self.rule.variant_distance else None
            match = self.index.find(sha, hashes["phash"], variants)
        return None if match is None else match.path

    def store(self, hashes: dict[str, Any], path: str) -> None:
        self.count += 1
        self.catalog.insert(catalog_row(hashes, path, self.count))

    def close(self) -> None:
        self.catalog.close()
        self._tmp.cleanup()


def _hashes(sample: Sample, rule: DedupeRule) -> dict[str, Any]:
    return sample.features["pdq" if rule.pdq else "phash"]


def decide(samples: list[Sample], rule: DedupeRule) -> tuple[dict[int, bool], int, list[str]]:
    """For one set: ``{copy index: caught}`` (copies against the stored originals), the number
    of false merges (every file looked up, then stored) and their descriptions."""
    usable = [s for s in samples if "rejected" not in s.features]
    by_path = {f"{s.dataset}/{n}": s for n, s in enumerate(usable)}
    caught: dict[int, bool] = {}
    crawl = Crawl(rule)
    try:
        for n, s in enumerate(usable):
            if s.role == "original":
                crawl.store(_hashes(s, rule), f"{s.dataset}/{n}")
        for n, s in enumerate(usable):
            if s.role == "copy":
                found = crawl.find(_hashes(s, rule), f"copy-{n}")
                caught[id(s)] = found is not None and by_path[found].group == s.group and by_path[found].role == "original"
    finally:
        crawl.close()
    false: list[str] = []
    crawl = Crawl(rule)
    try:
        for n, s in sorted(enumerate(usable), key=lambda item: item[1].role != "original"):
            found = crawl.find(_hashes(s, rule), f"all-{n}")
            if found is not None and by_path[found].group != s.group:
                false.append(f"{s.name} -> {by_path[found].name}")
            crawl.store(_hashes(s, rule), f"{s.dataset}/{n}")
    finally:
        crawl.close()
    return caught, len(false), false


def _distinct_pairs(samples: Iterable[Sample]) -> int:
    usable = [s for s in samples if "rejected" not in s.features]
    groups: dict[str, int] = {}
    for s in usable:
        groups[s.group] = groups.get(s.group, 0) + 1
    total = len(usable) * (len(usable) - 1) // 2
    return total - sum(k * (k - 1) // 2 for k in groups.values())


def evaluate(datasets: dict[str, list[Sample]], methods: dict[str, DedupeRule], show_false: bool = False) -> None:
    names = list(methods)
    results = {name: {d: decide(samples, rule) for d, samples in datasets.items()} for name, rule in methods.items()}
    for n, name in enumerate(names):
        print(f"column {n + 1}: {name}")
    rows: list[tuple[str, str, list[Sample]]] = []
    for dataset, samples in datasets.items():
        by_kind: dict[str, list[Sample]] = {}
        for s in samples:
            if s.role == "copy":
                by_kind.setdefault(s.kind, []).append(s)
        rows += [(dataset, kind, copies) for kind, copies in by_kind.items()]
    width = min(60, max((len(f"{d}: {k}") for d, k, _ in rows), default=20))
    print(f"{'kind of copy':<{width}} {'same':>4} " + " ".join(f"{n + 1:>7}" for n in range(len(names))))
    totals: dict[str, list[int]] = {}
    for dataset, kind, copies in rows:
        same = kind not in NOT_SAME
        cells = []
        for name in names:
            hits = sum(results[name][dataset][0].get(id(s), False) for s in copies)
            cells.append(f"{hits}/{len(copies)}")
            for key in (f"set {dataset}", "all"):
                if same or key == "all":
                    t = totals.setdefault(f"{key}|{name}", [0, 0])
                    t[0] += hits
                    t[1] += len(copies)
            if same and dataset in ("pdq", "augly"):
                t = totals.setdefault(f"neardup|{name}", [0, 0])
                t[0] += hits
                t[1] += len(copies)
        print(f"{f'{dataset}: {kind}'[:width]:<{width}} {'yes' if same else '-':>4} " + " ".join(f"{c:>7}" for c in cells))

    def line(label: str, key: str) -> None:
        if f"{key}|{names[0]}" not in totals:
            return
        n = totals[f"{key}|{names[0]}"][1]
        print(f"{f'{label} ({n})':<{width}} {'':>4} " + " ".join(f"{totals[f'{key}|{m}'][0] / max(n, 1):>7.3f}" for m in names))

    for dataset in datasets:
        line(f"recall {dataset}, counted", f"set {dataset}")
    line("recall neardup/ (pdq+augly), counted", "neardup")
    line("recall, all kinds", "all")
    for dataset, samples in datasets.items():
        label = f"false merges, {dataset} ({_distinct_pairs(samples):,} pairs)"
        print(f"{label:<{width}} {'':>4} " + " ".join(f"{results[m][dataset][1]:>7}" for m in names))
    if show_false:
        for m in names:
            for dataset in datasets:
                for text in results[m][dataset][2]:
                    print(f"  false ({m}, {dataset}): {text}")
    rejected = [f"{s.dataset}/{s.name}: {s.features['rejected']}" for d in datasets.values() for s in d if "rejected" in s.features]
    if rejected:
        print("rejected by verify_image (not counted):", "; ".join(rejected))


# -- margins ---------------------------------------------------------------------------------


def _bits(x: str, y: str) -> int:
    return hamming(int(x, 16), int(y, 16))


def pair_figures(q: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Every figure the PDQ rule looks at for one pair (``hashes_of`` of each; ``q`` the newer):
    best dihedral full-picture bits, best PDQ window pair bits, the minimum quality, the second
    look at the identity, the nearest phash window pair (colour-gated) and the best aligned look
    of the ``WINDOW_LOOKS`` nearest pairs."""
    full = min((_bits(q[kind], s[FULL]), t) for t, kind in enumerate(DIHEDRAL_KINDS))
    pairs = {*WINDOW_PAIRS, *((b, a) for a, b in WINDOW_PAIRS)}
    windows = [_bits(q[x], s[y]) for x, y in pairs if x in q and y in s]
    coarse = window_candidates(replace(RULE, window_distance=63), q, s)
    figures: dict[str, Any] = {
        "full": full[0],
        "pdq_window": min(windows, default=256),
        "quality": min(q["pdq_quality"], s["pdq_quality"]),
        "look": second_look(*aligned_thumbnails(q["look"], s["look"], full[1])),
        "phash_window": coarse[0][0] if coarse else 64,
        "aligned": None,
    }
    tried = [kinds for distance, kinds in coarse[:WINDOW_LOOKS] if distance <= 12]
    if tried:  # the best of the pairs the index gives an aligned look
        figures["aligned"] = min(
            aligned_difference(q["look"], s["look"], (window_box(x, q["look"], VARIANTS), window_box(y, s["look"], VARIANTS)))
            for x, y in tried
        )
    return figures


def margins(datasets: dict[str, list[Sample]]) -> None:
    """Per set: the figures of the counted copies against their originals, and of the nearest
    distinct pairs (every pair of different groups), for each threshold of the PDQ rule."""

    def summary(values: list[float]) -> str:
        v = sorted(values)
        if not v:
            return "none"
        return f"n={len(v)} min {v[0]:.3g} median {v[len(v) // 2]:.3g} p90 {v[int(0.9 * len(v))]:.3g} max {v[-1]:.3g}"

    print("\nmargins (full/windows in bits; looks in standardised grey levels)")
    for dataset, samples in datasets.items():
        usable = [s for s in samples if "rejected" not in s.features]
        originals = {s.group: s for s in usable if s.role == "original"}
        true = [
            (pair_figures(s.features["pdq"], originals[s.group].features["pdq"]), s.kind)
            for s in usable
            if s.role == "copy" and s.kind not in NOT_SAME and s.group in originals
        ]
        distinct = []
        for j in range(len(usable)):
            for i in range(j):
                if usable[i].group != usable[j].group:
                    figures = pair_figures(usable[j].features["pdq"], usable[i].features["pdq"])
                    distinct.append((figures, f"{usable[j].name[-28:]} ~ {usable[i].name[-28:]}"))
        print(f" {dataset}: {len(true)} copies, {len(distinct):,} distinct pairs")
        for key in ("full", "pdq_window", "phash_window"):
            print(f"   {key:<13} copies   {summary([f[key] for f, _ in true])}")
            print(f"   {key:<13} distinct {summary([f[key] for f, _ in distinct])}")
        near_full = [(f["look"], f["full"], label) for f, label in distinct if _bits_identity_ok(f)]
        print("   look (full <= 50 bits)  copies:", summary([f["look"] for f, _ in true if f["full"] <= 50]))
        print("   look (full <= 50 bits)  distinct:", ", ".join(f"{v:.3f} ({b} bits, {l})" for v, b, l in sorted(near_full)[:4]) or "none")
        aligned_true = [f["aligned"] for f, _ in true if f["aligned"] is not None and f["phash_window"] <= RULE.window_distance]
        aligned_false = sorted(
            (f["aligned"], f["phash_window"], label)
            for f, label in distinct
            if f["aligned"] is not None and f["phash_window"] <= RULE.window_distance
        )
        print(f"   aligned look (phash window <= {RULE.window_distance}, colour agrees) copies:", summary(aligned_true))
        print("   aligned look, distinct:", ", ".join(f"{v:.3f} ({b} bits, {l})" for v, b, l in aligned_false[:4]) or "none")


def _bits_identity_ok(figures: dict[str, Any]) -> bool:
    return figures["full"] <= RULE.look_distance


def pdq_self_check() -> str:
    """The core's PDQ (``crawler.images.pdq``: numpy DCTs of the 64x64 square) against the
    reference C++ (``pdqhash`` on PyPI, when installed) on the same square, hash and quality."""
    try:
        import numpy as np
        import pdqhash
    except ImportError:
        return "PDQ self-check skipped: pdqhash is not installed (pip install pdqhash)"
    from crawler.images.hashing import canonical_image
    from crawler.images.pdq import look_square, pdq_hashes

    equal = total = 0
    for path in sorted((NEARDUP / "pdq" / "files").iterdir())[:12] + hymenoptera_files()[::40]:
        record = pdq_hashes(canonical_image(verify_image(path.read_bytes()).image))
        square = np.repeat(look_square(record.look)[:, :, None], 3, axis=2)
        bits, quality = pdqhash.compute(np.ascontiguousarray(square))
        equal += np.packbits(bits).tobytes().hex() == record.pdq and quality == record.quality
        total += 1
    return f"PDQ self-check: hash and quality equal to pdqhash on the same 64x64 input {equal}/{total}"


# -- cost ------------------------------------------------------------------------------------


def cost(rounds: int = 5) -> None:
    """Median ms per image to hash the canonical image (the crawl's ``hashes_of`` with pdq,
    the phash recipe's ``image_hashes``) over the hymenoptera photos, and to decide it
    (``PdqCatalogIndex.find`` / ``CatalogHashIndex.find`` against the other 396 stored), in
    alternating rounds."""
    images = []
    for path in hymenoptera_files():
        try:
            images.append(verify_image(path.read_bytes()).image)
        except Rejected:
            pass
    calls = {"pdq (hashes_of)": lambda im: hashes_of(im, "pdq"), "phash recipe (image_hashes)": image_hashes}
    timings: dict[str, list[float]] = {k: [] for k in calls}
    per_round: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            samples = []
            for image in images:
                started = time.perf_counter()
                call(image)
                samples.append((time.perf_counter() - started) * 1000)
            timings[name] += samples
            per_round[name].append(statistics.median(samples))
    print(f"hashing, ms per image ({len(images)} hymenoptera photos, canonical images, {rounds} alternating rounds; load {os.getloadavg()[0]:.2f})")
    for name in calls:
        print(f"  {name:<30} median {statistics.median(timings[name]):.3f}  round medians {' '.join(f'{v:.3f}' for v in per_round[name])}")
    hashes = {"pdq": [hashes_of(im, "pdq") for im in images], "phash": [image_hashes(im) for im in images]}
    decide_ms: dict[str, list[float]] = {"pdq": [], "phash": []}
    crawls = {name: Crawl(default_rule(name)) for name in decide_ms}
    try:
        for name, crawl in crawls.items():
            for n, h in enumerate(hashes[name]):
                crawl.store(h, f"h{n}")
            crawl.index.refresh()
        for _ in range(rounds):
            for name, crawl in crawls.items():
                samples = []
                for n, h in enumerate(hashes[name]):
                    started = time.perf_counter()
                    crawl.find(h, f"q{n}")  # finds itself (0 bits): the index's sure path
                    samples.append((time.perf_counter() - started) * 1000)
                decide_ms[name].append(statistics.median(samples))
    finally:
        for crawl in crawls.values():
            crawl.close()
    print(f"deciding, ms per image against {len(images)} stored (each finds itself), round medians:")
    for name, values in decide_ms.items():
        print(f"  {name:<30} median {statistics.median(values):.3f}  rounds {' '.join(f'{v:.3f}' for v in values)}")


def load_all() -> dict[str, list[Sample]]:
    return {
        "pdq": load_neardup("pdq"),
        "augly": load_neardup("augly"),
        "exif": load_exif(),
        "hymenoptera": load_hymenoptera(),
        "bid": load_site("bid"),
        "gaa": load_site("gaa"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.neardup_real", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="pickle the hashes here and reuse them (same recipe only)")
    parser.add_argument("--margins", action="store_true", help="also print the distances behind each threshold")
    parser.add_argument("--false", action="store_true", help="also list every false merge")
    parser.add_argument("--cost", action="store_true", help="print the hashing and decision cost per image only")
    args = parser.parse_args(argv)
    if args.cost:
        cost()
        return
    if not NEARDUP.is_dir():
        raise SystemExit(f"error: {NEARDUP} is missing (the shared real test material)")
    datasets = None
    if args.cache and args.cache.exists():
        datasets = pickle.loads(args.cache.read_bytes())
        if any(s.features.get("recipe", hash_recipe("pdq")) != hash_recipe("pdq") for d in datasets.values() for s in d):
            datasets = None  # made by another recipe
    if datasets is None:
        datasets = load_all()
        for samples in datasets.values():
            for sample in samples:
                featurise(sample)
                sample.body = b""
        if args.cache:
            args.cache.write_bytes(pickle.dumps(datasets))
    print(pdq_self_check())
    started = time.perf_counter()
    evaluate(datasets, METHODS, args.false)
    if args.margins:
        margins(datasets)
    print(f"(evaluated in {time.perf_counter() - started:.0f} s; load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
