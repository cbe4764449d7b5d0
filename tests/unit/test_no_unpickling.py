"""Nothing the platform reads back from storage is unpickled: a worker that can write to the
bucket must not be able to run code on the head (or a replica) by planting a payload.

This scans the package's source for every way Python, PyTorch, Ray Tune, pandas, numpy or
joblib turn stored bytes into objects by unpickling. Each loader rayops does use is
tested with a real planted payload beside its code (``test_models.py``)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "platform" / "rayops"

# Calls that unpickle what they read (or restore state that was pickled).
FORBIDDEN = {
    r"\b(c?pickle|cloudpickle|dill|joblib)\.loads?\(": "unpickles its input",
    r"\bUnpickler\(": "unpickles its input",
    r"\bread_pickle\(": "pandas unpickles the file",
    r"allow_pickle\s*=\s*True": "numpy unpickles object arrays",
    r"weights_only\s*=\s*False": "torch.load unpickles arbitrary objects",
    r"\b(Tuner|Trainer|TorchTrainer|XGBoostTrainer)\.restore\(": (
        "Ray restores a pickled experiment (tuner.pkl, searcher state)"
    ),
    r"\.restore_from_dir\(": "Tune searchers restore pickled state",
}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines of code, without comments and docstring text."""
    lines, in_doc = [], False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        quotes = stripped.count('"""')
        if in_doc or stripped.startswith('"""'):
            in_doc = in_doc != (quotes % 2 == 1)
            continue
        lines.append((number, line.split("#", 1)[0]))
    return lines


def test_the_package_never_unpickles_stored_data():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in _code_lines(path):
            for pattern, why in FORBIDDEN.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()} ({why})")
    assert not found, "\n".join(found)


def test_every_torch_load_is_weights_only():
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in _code_lines(path):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{number}: {line.strip()}"


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The patterns match the calls they are meant to catch (a scan that cannot fail is
    no test)."""
    samples = [
        "state = pickle.loads(blob)",
        "tuner = tune.Tuner.restore(path, fn)",
        "obj = cloudpickle.load(f)",
        "np.load(p, allow_pickle=True)",
        "torch.load(f, weights_only=False)",
        "df = pd.read_pickle(p)",
    ]
    for sample in samples:
        assert any(re.search(p, sample) for p in FORBIDDEN), sample
    assert not any(re.search(p, "json.loads(text)") for p in FORBIDDEN)
