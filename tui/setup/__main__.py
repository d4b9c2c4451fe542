"""``python -m tui.setup FILE``: run the setup wizard for the site file FILE."""

from __future__ import annotations

import sys
from pathlib import Path

from tui.setup import SetupApp, progress_path


def main(argv: list[str]) -> int:
    """Run the wizard; exit 0 once written, 1 when quit with progress kept."""
    if len(argv) != 1:
        print("usage: python -m tui.setup FILE", file=sys.stderr)
        return 2
    config_path = Path(argv[0])
    if SetupApp(config_path).run():
        print(f"Setup wrote {config_path}; start the box with:")
        print(f"  nightbox run --config {config_path}")
        return 0
    if progress_path(config_path).exists():
        print(f"Setup not finished; progress kept in {progress_path(config_path)}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
