"""ray job submit -- python jobs/tune.py --config CONFIG [--resume]: sweep, then gate the
best model against the champion."""

from rayops.pipeline import train_and_register
from rayops.runtime import job_args

if __name__ == "__main__":
    args = job_args(__doc__)
    print(train_and_register(args.cfg, sweep=True, resume=args.resume,
                             dataset_version=args.dataset_version).summary())
