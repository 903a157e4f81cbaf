"""``python -m imageclf``: see :mod:`imageclf.cli`."""

import sys

from imageclf.cli import main

sys.exit(main())
