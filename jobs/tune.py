"""ray job submit -- python jobs/tune.py --config CONFIG: sweep; register the best trial."""

from rayops.pipeline import train_and_register
from rayops.runtime import job_config

if __name__ == "__main__":
    print(train_and_register(job_config(__doc__), sweep=True).summary())
