"""`rayops run` as a Ray job, with its options only (`--help` lists them):

    ray job submit --working-dir . -- \
        python jobs/pipeline.py CONFIG --base-dir "$PWD"

Every stage, then serve.
"""

import sys

from rayops.cli import console

if __name__ == "__main__":
    console(["run", *sys.argv[1:]])
