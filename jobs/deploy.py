"""ray job submit -- python jobs/deploy.py --config CONFIG [--base-dir DIR]: serve the
champion model.

On a running cluster the Serve application outlives this job.
"""

from rayops.runtime import errors_in_one_line, job_args
from rayops.serve import deploy

if __name__ == "__main__":
    with errors_in_one_line():
        cfg = job_args(__doc__).cfg
        print(f"serving {cfg.model_name}@{cfg.serve.model_alias} at {deploy(cfg)}/predict")
