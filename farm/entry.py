"""The ``farm`` command's entry point, kept light: Ctrl-C while the CLI's libraries load, or
as the command exits, gives one line or none, never a traceback."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    try:
        from farm.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(130) from None
    try:
        run()
    finally:
        # The command is done: a Ctrl-C now could only interrupt the interpreter's exit, with
        # a traceback from its shutdown or a death by signal instead of the command's status.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
