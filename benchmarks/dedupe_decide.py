"""CPU of the dedupe stage's decision per picture (``DedupePipeline._decide``), in isolation.

Feeds the hashes of ``--count`` distinct generated pictures (``pipeline_throughput``'s
``make_images``) plus copies of some of them (same bytes, half size recompressed, mirrored,
turned 90 degrees, cropped 90%, framed) through ``DedupePipeline._decide`` with a real SQLite
catalog in a temporary folder, one picture at a time as a crawl does: each unique picture's
row (hashes, windows, look) is committed by a second connection, as the store stage does, before
the next decision, and each duplicate's row too. Only ``_decide`` is timed (``time.process_time``;
one thread), apart for the distinct pictures (what ``pipeline_throughput`` crawls) and for the
copies (whose aligned looks cost 10-20 ms each). Prints the CPU seconds of each round, the
medians, and a digest of the decisions (which picture each was called a copy of, at what distance), which must
not change when the code gets faster.

    .venv/bin/python -m benchmarks.dedupe_decide [--count 2000] [--rounds 5] [--hash pdq] [--cache FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image, ImageOps
from scrapy.settings import Settings

from benchmarks.pipeline_throughput import make_images
from crawler.catalog import Catalog
from crawler.images.hashing import hashes_of
from crawler.images.matching import DedupeRule
from crawler.images.pdq import DIHEDRAL_KINDS
from crawler.pipelines.dedupe import DedupePipeline
from crawler.setting_values import dedupe_rule


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _copies(body: bytes) -> list[bytes]:
    """Copies of one picture, one of each kind."""
    image = Image.open(io.BytesIO(body)).convert("RGB")
    w, h = image.size
    return [
        body,
        _jpeg(image.resize((w // 2, h // 2)), 60),
        _jpeg(ImageOps.mirror(image)),
        _jpeg(image.transpose(Image.Transpose.ROTATE_90)),
        _jpeg(image.crop((w // 20, h // 20, w - w // 20, h - h // 20))),
        _jpeg(ImageOps.expand(image, border=24, fill=(255, 255, 255))),
    ]


Item = tuple[str, dict[str, Any], int, bool]


def material(count: int, copied: int, hash_name: str) -> list[Item]:
    """(sha256, hashes, width*height, is a copy) of ``count`` pictures, each of the first
    ``copied`` followed by its copies ``count // copied`` pictures later."""
    bodies = make_images(count)
    order: list[tuple[bytes, bool]] = [(body, False) for body in bodies]
    step = max(1, count // max(copied, 1))
    for n in range(copied - 1, -1, -1):
        at = min(len(order), n + step)
        order[at:at] = [(copy, True) for copy in _copies(bodies[n])]
    items = []
    for body, copy in order:
        image = Image.open(io.BytesIO(body)).convert("RGB")
        items.append((hashlib.sha256(body).hexdigest(), hashes_of(image, hash_name), image.width * image.height, copy))
    return items


def one_round(items: list[Item], rule: DedupeRule) -> tuple[float, float, str, int]:
    """CPU seconds in ``_decide`` over the distinct pictures and over the copies, the
    decisions' digest, duplicates found."""
    with tempfile.TemporaryDirectory() as tmp:
        crawler = SimpleNamespace(settings=Settings())
        pipeline = DedupePipeline(crawler, dataset_dir=Path(tmp), rule=rule)  # type: ignore[arg-type]
        pipeline.open_spider()
        store = Catalog(tmp)
        digest = hashlib.sha256()
        cpu = [0.0, 0.0]
        duplicates = 0
        for n, (sha256, hashes, pixels, copy) in enumerate(items):
            hashes = dict(hashes)
            started = time.process_time()
            seen_id, match = pipeline._decide(hashes, sha256)  # noqa: SLF001 (what is measured)
            cpu[copy] += time.process_time() - started
            path = f"x/{n:05d}.jpg"
            row: dict[str, Any] = {"url": f"http://x/{n}", "label": "x", "sha256": sha256, "path": path,
                                   "width": 1, "height": pixels, "phash": hashes.pop("phash")}
            if rule.pdq:
                dihedral = [hashes.pop(kind) for kind in DIHEDRAL_KINDS]
                row.update(pdq=dihedral[0], pdq_quality=hashes.pop("pdq_quality"), look=hashes.pop("look"))
            row["hashes"] = hashes
            if match is None:
                row["status"] = "stored"
            else:
                duplicates += 1
                row.update(status="duplicate", reason="near", duplicate_of=match.path, hash_distance=match.distance,
                           path=None)
            digest.update(f"{n} {seen_id > 0} {match and (match.path, match.distance, match.same_bytes)}\n".encode())
            store.insert(row)
        store.close()
        pipeline.close_spider()
    return cpu[0], cpu[1], digest.hexdigest()[:16], duplicates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="distinct pictures (default 2000)")
    parser.add_argument("--copied", type=int, default=40, help="pictures that get 6 copies each (default 40)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hash", default="pdq", help="DEDUPE_HASH (default pdq)")
    parser.add_argument("--cache", type=Path, help="keep the pictures' hashes in this file between runs")
    args = parser.parse_args(argv)
    rule = dedupe_rule(Settings({"DEDUPE_HASH": args.hash}))
    started = time.perf_counter()
    key = (args.count, args.copied, args.hash, 2)
    cached = pickle.loads(args.cache.read_bytes()) if args.cache and args.cache.exists() else None
    if cached is not None and cached[0] == key:
        items = cached[1]
    else:
        items = material(args.count, args.copied, args.hash)
        if args.cache:
            args.cache.write_bytes(pickle.dumps((key, items)))
    print(f"{len(items)} pictures hashed in {time.perf_counter() - started:.1f} s; {rule}", flush=True)
    copies = sum(item[3] for item in items)
    distinct, copied = [], []
    for r in range(args.rounds):
        cpu, copy_cpu, digest, duplicates = one_round(items, rule)
        distinct.append(cpu)
        copied.append(copy_cpu)
        print(f"round {r + 1}: _decide {cpu:.3f} CPU s for the {args.count} distinct pictures, {copy_cpu:.3f} for the "
              f"{copies} copies; {duplicates} duplicates, decisions {digest}", flush=True)
    print(f"median: _decide {statistics.median(distinct):.3f} CPU s per {args.count} distinct pictures "
          f"({1000 * statistics.median(distinct) / args.count:.3f} ms each), {statistics.median(copied):.3f} for the "
          f"{copies} copies ({1000 * statistics.median(copied) / max(copies, 1):.2f} ms each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
