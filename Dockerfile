# rayops on Ray's official image, for cluster nodes (cluster.yaml's docker section) and
# KubeRay. `make image` builds both flavours (needs Docker; the CI machines have none):
#   CPU nodes: rayops:<version>-cpu  FROM rayproject/ray:<ray>-py311-cpu, CPU torch
#   GPU nodes: rayops:<version>-gpu  FROM rayproject/ray:<ray>-py311-gpu, CUDA torch
# RAY_VERSION must be the version pyproject.toml pins (a test checks it).
ARG RAY_VERSION=2.60.0
ARG FLAVOR=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${FLAVOR}

# torch first and alone: the exact pin from the CPU index keeps a CPU image small; the GPU
# image takes the CUDA build from PyPI (TORCH_INDEX=https://pypi.org/simple). Everything
# else at the versions in requirements.lock, the laptop's versions.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The xgboost model family: the CPU-only wheel, or xgboost (CUDA) in the GPU image.
ARG XGBOOST_SPEC=xgboost-cpu==3.2.0

WORKDIR /home/ray/rayops
COPY --chown=ray:users pyproject.toml README.md requirements.lock ./
COPY --chown=ray:users platform ./platform
COPY --chown=ray:users jobs ./jobs
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
 && python -m pip install --no-cache-dir -c requirements.lock . "${XGBOOST_SPEC}"

# Ray's token authentication on every node that runs this image; the token itself comes
# from the cluster config (a mounted file or RAY_AUTH_TOKEN), never from the image.
ENV RAY_AUTH_MODE=token
