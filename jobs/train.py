"""ray job submit -- python jobs/train.py --config CONFIG: train and register as champion."""

from rayops.pipeline import train_and_register
from rayops.runtime import job_config

if __name__ == "__main__":
    print(train_and_register(job_config(__doc__), sweep=False).summary())
