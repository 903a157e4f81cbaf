"""Review a dataset with a model's scores: keep, delete or relabel images, then apply.

- :mod:`crawler.review.decisions`: marks per image; apply, recover and restore on the folder and
  the catalog together.
- :mod:`crawler.review.scores`: the model's scores file (``trainer.predict --out``).
- :mod:`crawler.review.app`: the web page and its API, which only the page itself may drive.
- :mod:`crawler.review.cli`: ``python -m crawler.review [serve] DATASET --scores ...`` and
  ``python -m crawler.review restore DATASET``.
"""

from crawler.review.app import create_app
from crawler.review.cli import main
from crawler.review.decisions import ACTIONS, JOURNAL_NAME, ReviewError, apply_decisions, decide, recover, restore
from crawler.review.scores import Score, load_scores

__all__ = [
    "ACTIONS", "JOURNAL_NAME", "ReviewError", "Score", "apply_decisions", "create_app", "decide", "load_scores",
    "main", "recover", "restore",
]
