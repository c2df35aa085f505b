"""``python -m anycnn``: the same command line as ``anycnn`` (:mod:`anycnn.cli`)."""

import sys

from anycnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
