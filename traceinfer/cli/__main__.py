"""``python -m traceinfer.cli``: the same as ``traceinfer``."""

import sys

from traceinfer.cli import main

sys.exit(main())
