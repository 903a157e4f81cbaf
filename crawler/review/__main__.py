"""``python -m crawler.review``: see :mod:`crawler.review.cli`."""

import sys

from crawler.review.cli import main

sys.exit(main())
