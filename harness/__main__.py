"""`python -m harness ...`."""

import sys

from harness.frontends.cli import main

# Guarded: worker processes started with "spawn" import the parent's __main__ again.
if __name__ == "__main__":
    sys.exit(main())
