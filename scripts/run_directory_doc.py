"""Print docs/run-directory.md from the code's schema (tests/test_rundir.py checks that the two agree).

    python scripts/run_directory_doc.py > docs/run-directory.md
"""

import sys

from traceinfer.rundir.schema import markdown

sys.stdout.write(markdown())
