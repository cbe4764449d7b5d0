"""ray job submit -- python jobs/pipeline.py --config CONFIG: every stage, then serve."""

from rayops.pipeline import run_pipeline
from rayops.runtime import job_config

if __name__ == "__main__":
    result = run_pipeline(job_config(__doc__))
    print(f"{result.dataset.id} -> {result.model.registered.name} "
          f"v{result.model.registered.version} @{result.model.registered.alias} -> {result.url}")
