"""The SID-speaking language model on MovieLens-100K end to end (see `sidgr.experiments.lm_demo`).

    python scripts/lm_demo.py            # the full run (about 45 min on 2 CPU cores)
    python scripts/lm_demo.py --quick    # a smoke run of the same pipeline (CI runs it)
"""
import sys

from sidgr.experiments.lm_demo import main

if __name__ == "__main__":
    sys.exit(main())
