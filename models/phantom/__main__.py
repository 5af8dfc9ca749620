"""``python -m models.phantom OUT_DIR ...``: see :mod:`models.phantom.cli`."""

import sys

from models.phantom.cli import main

sys.exit(main())
