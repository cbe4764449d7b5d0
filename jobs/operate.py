"""`rayops operate` as a Ray job, with its options only (`--help` lists them):

    ray job submit --working-dir . -- \
        python jobs/operate.py CONFIG --base-dir "$PWD" [--cycles N]

Resubmitted, it resumes its unfinished cycle.
"""

import sys

from rayops.cli import console

if __name__ == "__main__":
    console(["operate", *sys.argv[1:]])
