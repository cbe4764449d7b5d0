"""`rayops train` as a Ray job, with its options only (`--help` lists them):

    ray job submit --working-dir . -- \
        python jobs/train.py CONFIG --base-dir "$PWD" [--resume] [--dataset-version N]
"""

import sys

from rayops.cli import console

if __name__ == "__main__":
    console(["train", *sys.argv[1:]])
