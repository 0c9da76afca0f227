"""What the tests share: helpers, constants, test servers and receivers, imported as `support.<module>`.

pytest puts tests/ on sys.path (tests/conftest.py is in a directory without __init__.py), for the
unit tests under tests/unit as for the kernel tests. No test module imports another; the fixtures
are in tests/conftest.py. Importing a module here needs no privilege and loads nothing into the
kernel; bench/ imports ports.py and opensearch_cluster.py too (with tests/ on its sys.path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The interpreter itself: `python3` on PATH may be a pyenv shim (a bash script) whose
# helper processes would show up as events of their own.
PYTHON = os.path.realpath(sys.executable)
