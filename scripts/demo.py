"""The MovieLens-100K demo end to end (see `sidgr.experiments.demo`).

    python scripts/demo.py            # the full run
    python scripts/demo.py --quick    # a smoke run of the same pipeline in a few minutes (CI runs it)
"""
import sys

from sidgr.experiments.demo import main

if __name__ == "__main__":
    sys.exit(main())
