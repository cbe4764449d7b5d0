"""The container image's recipe, checked without Docker (the CI machines have none): the
Dockerfile parses, its base is Ray's image of the pinned Ray and Python, it installs what
pyproject.toml declares with the Makefile's torch pin, and only the code goes in."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "WORKDIR",
    "COPY",
    "RUN",
    "USER",
    "LABEL",
    "CMD",
    "ENTRYPOINT",
    "EXPOSE",
    "ADD",
    "SHELL",
    "HEALTHCHECK",
}


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word, rest.strip()))
    return out


def arg_defaults() -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)


def pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if d.startswith("ray[")]
    return ray.split("==")[1]


def test_dockerfile_parses_into_known_instructions():
    parsed = instructions()
    assert parsed and all(word in INSTRUCTIONS for word, _ in parsed), parsed
    assert [w for w, _ in parsed].count("FROM") == 1


def test_base_image_is_rays_for_the_pinned_version_and_python_311():
    defaults = arg_defaults()
    (base,) = [a for w, a in instructions() if w == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-py311-${FLAVOR}"
    assert defaults["RAY_VERSION"] == pinned_ray()
    assert defaults["FLAVOR"] == "cpu"
    makefile = (ROOT / "Makefile").read_text()
    assert "--build-arg FLAVOR=gpu" in makefile and "--build-arg FLAVOR=cpu" in makefile


def test_install_matches_pyproject_and_the_makefiles_torch_and_xgboost_pins():
    (run,) = [a for w, a in instructions() if w == "RUN"]
    assert '"${TORCH_SPEC}"' in run
    assert run.rstrip().endswith(
        'pip install --no-cache-dir -c requirements.lock . "${XGBOOST_SPEC}"'
    )
    for arg in ("TORCH_SPEC", "XGBOOST_SPEC"):
        pin = re.search(rf"^{arg} \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
        assert pin and arg_defaults()[arg] == pin.group(1), arg
    copied = [a.split()[-2] for w, a in instructions() if w == "COPY"]
    assert {"platform", "jobs"} <= set(copied)  # the package pyproject.toml builds
    assert ("ENV", "RAY_AUTH_MODE=token") in instructions()


def test_only_the_code_goes_into_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "lake", "mlflow", ".git"} <= ignored
