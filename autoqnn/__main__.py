"""`python -m autoqnn` runs the command line."""

import sys

from autoqnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
