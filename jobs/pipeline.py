"""ray job submit -- python jobs/pipeline.py --config CONFIG [--base-dir DIR]: every stage,
then serve."""

from rayops.pipeline import run_pipeline
from rayops.runtime import errors_in_one_line, job_args

if __name__ == "__main__":
    with errors_in_one_line():
        result = run_pipeline(job_args(__doc__).cfg)
        print(f"{result.model.summary()}\nserving at {result.url}")
