"""Benchmark: near-duplicate quality on real photos (issue 4), ours beside imagededup.

From every photo of a folder (default ../shared/data/hymenoptera_data: 397 decodable photos,
pairwise distinct) it makes the copies shops and search results make: ``down`` (half size, JPEG
q60), ``crop`` (90% window at a random offset, ~10% cropped), ``pad`` (letterboxed to a white
square), ``border`` (a 5% frame in black, dark grey, white or beige), ``caption`` (a 12% bar
with text below, white or black), ``rotate`` (2-4 degrees either way, white fill). Then:

* recall: share of copies matched to their own original;
* false matches: pairs of distinct originals linked (every one is wrong).

"ours (pdq)" is the crawl's default (``PdqCatalogIndex`` with the ``DEDUPE_DEFAULTS`` of pdq:
PDQ with flips, turns, two windows and the second look, plus imagehash phash windows confirmed
by the aligned look), also without its second look and without the phash windows;
"ours (phash...)" the phash recipe. "ours" is the verify and dedupe stages themselves: every file goes through ``verify_image`` (which
decodes it the way the crawl does, JPEGs at reduced size) and ``image_hashes``; a catalog in a
temporary folder gets the originals one by one through ``CatalogHashIndex`` (each checked first,
as the pipeline does), then every copy is checked. "ours, plain phash" turns the variants off (``DEDUPE_VARIANT_DISTANCE=0``).
imagededup's PHash and DHash run in the peers' environment (``benchmarks/peers.sh``) on the
same files, at their default threshold (10 bits) and at 6 bits.

Reproduce::

    bash benchmarks/peers.sh                      # once: peers' venvs in /tmp/imageclf-peers
    .venv/bin/python -m benchmarks.dedupe_quality [--images DIR] [--peers /tmp/imageclf-peers] [--hash dhash ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from crawler import settings as defaults
from crawler.catalog import Catalog
from crawler.images.decode import verify_image
from crawler.images.hashing import HASH_FUNCTIONS, hashes_of, image_hashes
from crawler.images.index import CatalogHashIndex, PdqCatalogIndex
from crawler.images.matching import DedupeRule
from crawler.images.pdq import DIHEDRAL_KINDS

PHASH = defaults.DEDUPE_DEFAULTS["phash"]
# The crawl's default rule (DEDUPE_HASH=pdq and its DEDUPE_DEFAULTS).
PDQ_RULE = DedupeRule(**{k.removeprefix("DEDUPE_").lower(): v for k, v in defaults.DEDUPE_DEFAULTS["pdq"].items()})

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "hymenoptera_data"
DEFAULT_PEERS = Path(os.environ.get("PEERS_DIR", "/tmp/imageclf-peers"))
SUFFIXES = {".jpg", ".jpeg", ".png"}


def _jpeg(image: Image.Image, quality: int = 75) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def down(image: Image.Image, rng: random.Random) -> bytes:
    return _jpeg(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS), 60)


def crop(image: Image.Image, rng: random.Random) -> bytes:
    w, h = image.size
    left, top = rng.uniform(0, 0.1), rng.uniform(0, 0.1)
    return _jpeg(image.crop((int(left * w), int(top * h), int((0.9 + left) * w), int((0.9 + top) * h))))


def pad(image: Image.Image, rng: random.Random) -> bytes:
    side = max(image.size)
    square = Image.new("RGB", (side, side), "white")
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return _jpeg(square)


def border(image: Image.Image, rng: random.Random) -> bytes:
    colour = rng.choice([(0, 0, 0), (30, 30, 30), (255, 255, 255), (200, 170, 120)])
    return _jpeg(ImageOps.expand(image, max(4, int(0.05 * max(image.size))), fill=colour))


def caption(image: Image.Image, rng: random.Random) -> bytes:
    w, h = image.size
    bar = int(0.12 * h)
    background = rng.choice(["white", "black"])
    canvas = Image.new("RGB", (w, h + bar), background)
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text(
        (10, h + bar // 4), "Honey bee on a flower - example-shop.com",
        fill="black" if background == "white" else "white", font_size=max(10, bar // 2),
    )
    return _jpeg(canvas)


def rotate(image: Image.Image, rng: random.Random) -> bytes:
    angle = rng.choice([-1, 1]) * rng.uniform(2, 4)
    return _jpeg(image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white"))


TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], bytes]] = {
    "down": down, "crop": crop, "pad": pad, "border": border, "caption": caption, "rotate": rotate,
}


def decode(body: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except Exception:  # the folder's junk (imageNotFound.gif) is not a photo
        return None


def build_set(images_dir: Path, folder: Path, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """Write originals (their own bytes) and copies (JPEG) into ``folder``; return the names."""
    rng = random.Random(seed)
    originals: list[str] = []
    copies: dict[str, list[str]] = {name: [] for name in TRANSFORMS}
    for path in sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in SUFFIXES):
        body = path.read_bytes()
        image = decode(body)
        if image is None:
            continue
        n = len(originals)
        name = f"o{n:04d}{path.suffix.lower()}"
        (folder / name).write_bytes(body)
        originals.append(name)
        for kind, transform in TRANSFORMS.items():
            copy = f"c{n:04d}_{kind}.jpg"
            (folder / copy).write_bytes(transform(image, rng))
            copies[kind].append(copy)
    return originals, copies


def ours(
    folder: Path, originals: list[str], copies: dict[str, list[str]], variant_distance: int, hash_name: str = "phash"
) -> dict:
    """Recall per transform and false-match pairs of the dedupe stage's own index."""
    with tempfile.TemporaryDirectory() as dataset:
        catalog = Catalog(dataset)
        index = CatalogHashIndex(catalog, PHASH["DEDUPE_MAX_DISTANCE"], variant_distance)
        false_pairs = 0
        started = time.perf_counter()
        for n, name in enumerate(originals):
            verified = verify_image((folder / name).read_bytes())
            hashes = image_hashes(verified.image, hash_name)
            phash = hashes.pop("phash")
            index.refresh()
            if index.find(f"sha-{n}", phash, hashes if variant_distance else None) is not None:
                false_pairs += 1
            catalog.insert({
                "label": "x", "status": "stored", "path": name, "sha256": f"sha-{n}", "phash": phash,
                "width": verified.width, "height": verified.height, "hashes": hashes,
            })
        index.refresh()
        recall = {}
        for kind, names in copies.items():
            hits = 0
            for n, name in enumerate(names):
                hashes = image_hashes(verify_image((folder / name).read_bytes()).image, hash_name)
                phash = hashes.pop("phash")
                match = index.find(f"copy-{kind}-{n}", phash, hashes if variant_distance else None)
                hits += match is not None and match.path == originals[n]
            recall[kind] = hits / len(names)
        seconds = time.perf_counter() - started
        catalog.close()
    images = len(originals) * (1 + len(copies))
    return {"recall": recall, "false": false_pairs, "ms_per_image": 1000 * seconds / images}


def ours_pdq(folder: Path, originals: list[str], copies: dict[str, list[str]], rule: DedupeRule = PDQ_RULE) -> dict:
    """``ours`` for the pdq rule (``PdqCatalogIndex``, as the dedupe stage asks it)."""

    def row(hashes: dict, n: int, name: str, verified: object) -> dict:
        dihedral = [hashes.pop(kind) for kind in DIHEDRAL_KINDS]
        return {
            "label": "x", "status": "stored", "path": name, "sha256": f"sha-{n}", "phash": hashes.pop("phash"),
            "pdq": dihedral[0], "pdq_quality": hashes.pop("pdq_quality"), "look": hashes.pop("look"),
            "width": verified.width, "height": verified.height, "hashes": hashes,  # type: ignore[attr-defined]
        }

    with tempfile.TemporaryDirectory() as dataset:
        catalog = Catalog(dataset)
        index = PdqCatalogIndex(catalog, rule)
        false_pairs = 0
        started = time.perf_counter()
        for n, name in enumerate(originals):
            verified = verify_image((folder / name).read_bytes())
            hashes = hashes_of(verified.image)
            index.refresh()
            if index.find(f"sha-{n}", hashes) is not None:
                false_pairs += 1
            catalog.insert(row(hashes, n, name, verified))
        index.refresh()
        recall = {}
        for kind, names in copies.items():
            hits = 0
            for n, name in enumerate(names):
                hashes = hashes_of(verify_image((folder / name).read_bytes()).image)
                match = index.find(f"copy-{kind}-{n}", hashes)
                hits += match is not None and match.path == originals[n]
            recall[kind] = hits / len(names)
        seconds = time.perf_counter() - started
        catalog.close()
    images = len(originals) * (1 + len(copies))
    return {"recall": recall, "false": false_pairs, "ms_per_image": 1000 * seconds / images}


PEER_SCRIPT = r"""
import json, sys, time
from imagededup.methods import PHash, DHash
folder, thresholds = sys.argv[1], [int(t) for t in sys.argv[2].split(",")]
out = {}
for method in (PHash, DHash):
    hasher = method(verbose=False)
    started = time.perf_counter()
    encodings = hasher.encode_images(image_dir=folder)
    seconds = time.perf_counter() - started
    for t in thresholds:
        found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=t)
        out[f"{method.__name__} (<= {t} bits)"] = {"duplicates": found, "ms_per_image": 1000 * seconds / len(encodings)}
print(json.dumps(out))
"""


def peers(folder: Path, originals: list[str], copies: dict[str, list[str]], python: Path) -> dict[str, dict]:
    """imagededup's PHash and DHash on the same files, scored like ours."""
    done = subprocess.run(
        [str(python), "-c", PEER_SCRIPT, str(folder), "10,6"],
        capture_output=True, text=True, check=True, timeout=1800,
    )
    results = {}
    originals_set = set(originals)
    for name, found in json.loads(done.stdout.strip().splitlines()[-1]).items():
        duplicates = {key: set(value) for key, value in found["duplicates"].items()}
        false = sum(len(duplicates.get(o, set()) & originals_set) for o in originals) // 2
        recall = {
            kind: sum(originals[n] in duplicates.get(copy, set()) for n, copy in enumerate(names)) / len(names)
            for kind, names in copies.items()
        }
        results[name] = {"recall": recall, "false": false, "ms_per_image": found["ms_per_image"]}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dedupe_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos (searched recursively)")
    parser.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="folder made by benchmarks/peers.sh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hash", action="append", choices=list(HASH_FUNCTIONS), default=None,
                        help="also measure ours with this DEDUPE_HASH (repeatable; phash always runs)")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        print(f"skipped: no photos at {args.images}")  # noqa: T201
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        originals, copies = build_set(args.images, folder, args.seed)
        results = {
            "ours (pdq, default)": ours_pdq(folder, originals, copies),
            "ours (pdq, no second look)": ours_pdq(folder, originals, copies, DedupeRule(**{**PDQ_RULE.__dict__, "look_distance": 0})),
            "ours (pdq, no phash windows)": ours_pdq(folder, originals, copies, DedupeRule(**{**PDQ_RULE.__dict__, "window_distance": 0})),
            "ours (phash<=6 + variants<=8)": ours(folder, originals, copies, PHASH["DEDUPE_VARIANT_DISTANCE"]),
            "ours, plain phash (<= 6 bits)": ours(folder, originals, copies, 0),
        }
        for name in args.hash or []:
            if name != "phash":
                results[f"ours, DEDUPE_HASH={name}"] = ours(
                    folder, originals, copies, PHASH["DEDUPE_VARIANT_DISTANCE"], name
                )
        peer_python = args.peers / "torch" / "bin" / "python"
        if peer_python.exists():
            results.update({f"imagededup {k}": v for k, v in peers(folder, originals, copies, peer_python).items()})
        else:
            print(f"imagededup not measured: {peer_python} missing (run benchmarks/peers.sh)")  # noqa: T201
    kinds = list(TRANSFORMS)
    header = f"{'method':<34} {'recall':>6} " + " ".join(f"{k:>7}" for k in kinds) + f" {'false':>6} {'ms/img':>7}"
    lines = [
        f"{len(originals)} photos x {len(kinds)} copies each; false = pairs of distinct photos linked "
        f"(of {len(originals) * (len(originals) - 1) // 2:,})",
        header,
        "-" * len(header),
    ]
    for name, result in results.items():
        recall = result["recall"]
        overall = sum(recall.values()) / len(recall)
        lines.append(
            f"{name:<34} {overall:>6.1%} " + " ".join(f"{recall[k]:>7.1%}" for k in kinds)
            + f" {result['false']:>6} {result['ms_per_image']:>7.1f}"
        )
    lines.append(f"load average (1 min): {os.getloadavg()[0]:.2f}")
    lines.append(f"reproduce: bash benchmarks/peers.sh && {Path(sys.executable).name} -m benchmarks.dedupe_quality --images {args.images}")
    print("\n".join(lines))  # noqa: T201 (a benchmark's output is its table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
