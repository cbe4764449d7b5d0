"""ray job submit -- python jobs/pipeline.py --config CONFIG: every stage, then serve."""

from rayops.pipeline import run_pipeline
from rayops.runtime import job_args

if __name__ == "__main__":
    result = run_pipeline(job_args(__doc__).cfg)
    print(f"{result.model.summary()}\nserving at {result.url}")
