"""Benchmark: CPU per image of the prepare stage's work (issues 13 and 14), per hash recipe and part.

What a crawl's worker process does for each downloaded image is ``prepare_image``: verify
(complete decode, normalise, the canonical image) and hash for dedupe (``hashes_of``). Printed
in ms of CPU (``time.process_time``) per image, on each image set:

* ``verify_image`` alone (the decode every recipe pays);
* ``prepare_image`` with ``DEDUPE_HASH=pdq`` (the default) and with ``phash``;
* the pdq recipe's parts on the canonical image: grey and trim box, ``pdq_hashes`` (PDQ of the
  64x64 square, its 8 dihedral hashes, 2 windows, quality, the look), the 9 phash windows
  (``phash_boxes``), the colour signature.

Image sets: generated 320x240 JPEGs (``benchmarks.pipeline_throughput``'s, the images its crawl
downloads) and, when ``../shared`` has them, the hymenoptera photos (500x375 and larger). Every
row runs over the whole set once per round, the rows alternating within a round, and the median
of the rounds is printed with each round's figure (the machine drifts; read rows of one run side
by side).

Reproduce::

    .venv/bin/python -m benchmarks.hash_cost [--rounds 5] [--count 200] [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.pipeline_throughput import make_images
from crawler.images.borders import trim_box
from crawler.images.decode import Rejected, verify_image
from crawler.images.hashing import _colour_signature, _window_boxes, phash_boxes
from crawler.images.pdq import pdq_hashes
from crawler.images.prepare import prepare_image

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera_data"


def rows_for(bodies: list[bytes]) -> dict[str, Callable[[int], object]]:
    """The timed calls, each of one image (by index into ``bodies``)."""
    canonical = [verify_image(body).image for body in bodies]
    greys = [image.convert("L") for image in canonical]
    trims = [trim_box(np.asarray(grey)) for grey in greys]

    def phash_windows(n: int) -> object:
        return phash_boxes(np.asarray(greys[n]), list(dict.fromkeys(_window_boxes(canonical[n].size, trims[n]))))

    return {
        "verify_image alone": lambda n: verify_image(bodies[n]),
        "prepare_image, pdq": lambda n: prepare_image(bodies[n], {}, "pdq"),
        "prepare_image, phash": lambda n: prepare_image(bodies[n], {}, "phash"),
        "  pdq part: grey + trim box": lambda n: trim_box(np.asarray(canonical[n].convert("L"))),
        "  pdq part: pdq_hashes": lambda n: pdq_hashes(canonical[n], grey=greys[n], trim=trims[n]),
        "  pdq part: phash windows": phash_windows,
        "  pdq part: colour signature": lambda n: _colour_signature(canonical[n], trims[n]),
    }


def measure(name: str, bodies: list[bytes], rounds: int) -> None:
    rows = rows_for(bodies)
    for call in rows.values():
        call(0)  # imports (scipy for the phash recipe) and caches outside the timing
    figures: dict[str, list[float]] = {row: [] for row in rows}
    for _ in range(rounds):
        for row, call in rows.items():
            started = time.process_time()
            for n in range(len(bodies)):
                call(n)
            figures[row].append((time.process_time() - started) * 1000 / len(bodies))
    print(f"{name}: {len(bodies)} images, CPU ms per image, median of {rounds} alternating rounds (load {os.getloadavg()[0]:.2f})")
    for row, values in figures.items():
        print(f"  {row:<32} {statistics.median(values):6.2f}   rounds {' '.join(f'{v:.2f}' for v in values)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hash_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=200, help="generated images, and at most this many photos")
    parser.add_argument("--images", type=Path, default=HYMENOPTERA, help="folder of real JPEGs (default: the hymenoptera photos)")
    args = parser.parse_args(argv)
    measure("generated 320x240 JPEGs", make_images(args.count), args.rounds)
    bodies = []
    for path in sorted(args.images.rglob("*.jpg")) if args.images.is_dir() else []:
        body = path.read_bytes()
        try:
            verify_image(body)
        except Rejected:
            continue
        bodies.append(body)
        if len(bodies) == args.count:
            break
    if bodies:
        measure(f"photos under {args.images}", bodies, args.rounds)
    else:
        print(f"(no JPEGs under {args.images}: photo set skipped)")


if __name__ == "__main__":
    main()
