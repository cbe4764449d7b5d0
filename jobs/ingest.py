"""`rayops ingest` as a Ray job, with its options only (`--help` lists them):

    ray job submit --working-dir . -- \
        python jobs/ingest.py CONFIG --base-dir "$PWD" [--set KEY=VALUE]
"""

import sys

from rayops.cli import console

if __name__ == "__main__":
    console(["ingest", *sys.argv[1:]])
