"""`python -m exporter` is the same as the `wattlens` command."""

import sys

from exporter.cli import main

sys.exit(main())
