"""`python -m merging run | check | learn`: see merging/cli.py."""

import sys

from merging.cli import main

sys.exit(main())
