"""The ``farm`` command's entry point, kept light: Ctrl-C while the CLI's libraries load gives
one line, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from farm.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
