"""The install is reproducible: what `make install` put in this environment is what
requirements.lock says, and torch is the build the Makefile and the Dockerfile pin."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# Installed by the Makefile itself, not by the lock: the installers, the project, and torch
# (pinned by TORCH_SPEC). `make bench` adds three data-only packages without their dependencies.
NOT_LOCKED = {"pip", "uv", "setuptools", "wheel", "rayops", "torch"}
BENCH_DATA_ONLY = {"islp", "pmdarima", "recbole"}


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def _makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_every_installed_distribution_is_at_its_locked_version():
    locked = _locked()
    wrong, unlocked = [], []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in NOT_LOCKED or name in BENCH_DATA_ONLY:
            continue
        if name not in locked:
            unlocked.append(name)
        elif dist.version != locked[name]:
            wrong.append(f"{name} {dist.version} (locked {locked[name]})")
    assert not wrong, f"installed versions differ from requirements.lock: {wrong}"
    assert not unlocked, f"installed but not in requirements.lock: {unlocked}"


def test_torch_is_the_pinned_build_in_the_makefile_and_the_image():
    spec = _makefile_variable("TORCH_SPEC")
    assert metadata.version("torch").split("+")[0] == spec.split("==")[1]
    assert f"ARG TORCH_SPEC={spec}" in (ROOT / "Dockerfile").read_text()
    assert "torch==" not in (ROOT / "requirements.lock").read_text().replace("# torch", "")


def test_the_lock_covers_every_extra_and_the_xgboost_pin():
    locked = _locked()
    assert {"pytest", "mkdocs-material", "mypy", "palmerpenguins", "xgboost-cpu"} <= set(locked)
    name, version = _makefile_variable("XGBOOST_SPEC").split("==")
    assert locked[name] == version
