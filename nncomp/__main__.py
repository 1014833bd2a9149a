"""``python -m nncomp``: the command line (see nncomp/cli.py)."""
import sys

from .cli import main

sys.exit(main())
