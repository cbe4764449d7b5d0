"""`rayops deploy` as a Ray job, with its options only (`--help` lists them):

    ray job submit --working-dir . -- \
        python jobs/deploy.py CONFIG --base-dir "$PWD"

The Serve application outlives the job.
"""

import sys

from rayops.cli import console

if __name__ == "__main__":
    console(["deploy", *sys.argv[1:]])
