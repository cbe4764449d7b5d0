"""ray job submit -- python jobs/ingest.py --config CONFIG: curate the raw data."""

from rayops.data.ingest import ingest
from rayops.runtime import job_args

if __name__ == "__main__":
    version = ingest(job_args(__doc__).cfg)
    print(f"dataset {version.id}: {version.manifest['rows']}")
