"""The image core: everything the crawl does to one image, with no Scrapy or Twisted.

Used by the pipelines (thin Scrapy adapters), the worker processes (``crawler.workers``),
``crawler.dataset`` (check, rehash) and ``crawler.review``; importing it loads Pillow, numpy,
imagehash and the standard library only (``tests/crawler/test_image_core.py`` checks it).

* ``decode``: decode, verify and normalise downloaded bytes (``verify_image``).
* ``hashing``: the hash recipe (canonical reduction, perceptual hashes, windows; ``hashes_of``).
* ``pdq``: PDQ hashes (the default): 8 dihedral orientations, windows, quality, the grey square for the second look.
* ``borders``: uniform borders (letterbox bars, frames) both recipes trim.
* ``prepare``: the per-image function a crawl runs: verify, hash, stage (``prepare_image``).
* ``files``: dataset paths, the ``.tmp/`` staging folder, atomic writes, ``.trash/``.
* ``matching``: the match policy (which pairs of hashes, how close, the second look, which copy
  stays; ``DedupeRule``).
* ``index``: the in-memory index of a catalog's stored hashes (``PdqCatalogIndex``,
  ``CatalogHashIndex`` for the 64-bit hashes).
* ``rehash``: recompute a catalog's hashes when the recipe changed.
"""
