"""Data stage: read raw files, validate against the schema contract, curate and version."""
