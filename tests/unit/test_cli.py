import subprocess
import sys


def _rayops(*args: str) -> subprocess.CompletedProcess:
    code = "from rayops.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


def test_invalid_config_fails_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {label: y, task: classification, columns: {y: {type: texty}}}\n")
    result = _rayops("validate", str(bad))
    assert result.returncode == 2
    assert "data.columns.y.type" in result.stderr and "'texty'" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_prints_defaults(tmp_path):
    from rayops.demo import config_path

    result = _rayops("validate", str(config_path()), "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert '"epochs": 2' in result.stdout and '"host": "127.0.0.1"' in result.stdout


def test_help_lists_every_verb():
    result = _rayops("--help")
    for verb in ("ingest", "train", "tune", "deploy", "run", "demo", "validate"):
        assert verb in result.stdout
