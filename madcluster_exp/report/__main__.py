"""``python -m madcluster_exp.report <sweep dir | run id> [options]``."""

import sys

from madcluster_exp.report.build import main

if __name__ == "__main__":
    sys.exit(main())
