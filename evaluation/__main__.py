"""`python -m evaluation run | sweep | interference`: see evaluation/cli.py."""

import sys

from evaluation.cli import main

sys.exit(main())
