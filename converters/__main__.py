"""``python -m converters`` is ``edge-convert``."""

import sys

from converters.cli import main

sys.exit(main())
