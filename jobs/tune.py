"""ray job submit -- python jobs/tune.py --config CONFIG [--base-dir DIR] [--resume]: sweep,
then gate the best model against the champion."""

from rayops.pipeline import train_and_register
from rayops.runtime import errors_in_one_line, job_args, say_how_to_resume_when_stopped

if __name__ == "__main__":
    with errors_in_one_line():
        args = job_args(__doc__)
        say_how_to_resume_when_stopped()
        print(train_and_register(args.cfg, sweep=True, resume=args.resume,
                                 dataset_version=args.dataset_version).summary())
