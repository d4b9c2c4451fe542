"""``python -m tui``: the same as ``nightbox tui``."""

import sys

from tui.cli import main

sys.exit(main())
