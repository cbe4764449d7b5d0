"""ray job submit -- python jobs/ingest.py --config CONFIG [--base-dir DIR]: curate the raw
data."""

from rayops.data.ingest import ingest
from rayops.runtime import errors_in_one_line, job_args

if __name__ == "__main__":
    with errors_in_one_line():
        version = ingest(job_args(__doc__).cfg)
        print(f"dataset {version.id}: {version.manifest['rows']}")
