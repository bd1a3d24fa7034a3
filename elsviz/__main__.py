"""`python -m elsviz ...` is the `elsviz` command."""
import sys

from .cli import main

sys.exit(main())
