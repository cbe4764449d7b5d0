"""rayops: one path from raw files in object storage to a model served by Ray Serve.

Importing this package does nothing but define names; every side effect (starting Ray,
connecting to MLflow, touching storage) happens in an explicit call.
"""

__version__ = "0.1.0"
