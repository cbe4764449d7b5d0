"""What turns a config into something a cluster runs: the cluster's shape (``cluster``),
KubeRay manifests (``kuberay``) and Ray job submission (``jobs``). Pure functions from a
config to YAML or a job, tested without a cluster."""
