"""`python -m exporter`, the `wattlens` command and the standalone program's entry: the CLI, or, in the process
the CLI exec()ed into to serve (docs/architecture.md, "Process model"), the daemon; decided before anything heavy
is imported, so the daemon never loads the CLI's pydantic and argparse."""

import os
import sys

from exporter.handover import RUNTIME_FD_ENV


def main() -> int:
    if RUNTIME_FD_ENV in os.environ:
        from exporter.runtime import main as serve_handed_over  # noqa: PLC0415 - the daemon's imports only

        return serve_handed_over()
    from exporter.cli import main as cli  # noqa: PLC0415 - the CLI's imports only

    return cli()


if __name__ == "__main__":
    sys.exit(main())
