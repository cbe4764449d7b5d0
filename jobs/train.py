"""ray job submit -- python jobs/train.py --config CONFIG [--base-dir DIR] [--resume]
[--dataset-version N]: train, then gate the model against the champion."""

from rayops.pipeline import train_and_register
from rayops.runtime import errors_in_one_line, job_args, say_how_to_resume_when_stopped

if __name__ == "__main__":
    with errors_in_one_line():
        args = job_args(__doc__)
        say_how_to_resume_when_stopped()
        print(train_and_register(args.cfg, sweep=False, resume=args.resume,
                                 dataset_version=args.dataset_version).summary())
