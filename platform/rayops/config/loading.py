"""Loading the pipeline config: YAML, ``KEY=VALUE`` overrides, ``${VAR:-default}``
references, relative paths, and validation errors that name the key, the value and what is
allowed."""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from rayops.config.base import BASE_DIR, is_uri
from rayops.config.pipeline import PipelineConfig
from rayops.errors import ConfigError


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "tune.enabled=false"]`` into typed values (YAML scalars)."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not KEY=VALUE (e.g. train.epochs=3)")
        result[key.strip()] = yaml.safe_load(value) if value else ""
    return result


def validate_config(raw: Any, source: str = "config") -> PipelineConfig:
    """Validate a parsed config mapping; errors name the key, the value and what is allowed."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(
    path: str | Path, overrides: list[str] | None = None, base_dir: str | Path | None = None
) -> PipelineConfig:
    """Read and validate a pipeline config file, applying ``KEY=VALUE`` overrides; relative
    local paths resolve against ``base_dir`` (default: the working directory)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {str(path)!r} is a folder: give the YAML file in it"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}): is it the YAML file?"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}"
        ) from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    if isinstance(raw, dict):
        for key, value in parse_overrides(overrides or []).items():
            set_dotted(raw, key, value)
        raw = _interpolate(raw, "")
    token = BASE_DIR.set(Path(base_dir).expanduser().resolve() if base_dir else None)
    try:
        cfg = validate_config(raw, source=str(path))
    finally:
        BASE_DIR.reset(token)
    if base_dir is None:
        _refuse_paths_into_a_job_copy(cfg)
    return cfg


def local_paths(cfg: PipelineConfig) -> dict[str, str]:
    """The config's keys that name a folder or file on this machine, resolved."""
    paths = {}
    if not is_uri(cfg.storage.root):
        paths["storage.root"] = cfg.storage.root
    if cfg.tracking.uri.startswith("sqlite:///"):
        paths["tracking.uri"] = cfg.tracking.uri[len("sqlite:///") :]
    if cfg.tracking.artifact_location and not is_uri(cfg.tracking.artifact_location):
        paths["tracking.artifact_location"] = cfg.tracking.artifact_location
    return paths


# Ray unpacks a job's --working-dir into its session folder and runs the job there.
_RAY_WORKING_DIR_COPY = ("runtime_resources", "working_dir_files")


def _refuse_paths_into_a_job_copy(cfg: PipelineConfig) -> None:
    """Inside a Ray job, a relative path resolves into Ray's temporary copy of the working
    directory: not the user's lake or MLflow store, and gone when the job ends."""
    cwd = Path.cwd()
    if not all(part in cwd.parts for part in _RAY_WORKING_DIR_COPY):
        return
    copy = cwd
    while copy.parent.name != "working_dir_files" and copy.parent != copy:
        copy = copy.parent
    for key, value in local_paths(cfg).items():
        if Path(value).is_relative_to(copy):
            raise ConfigError(
                f"{key} resolves to {value}, inside Ray's temporary copy of the job's working "
                "directory, which does not hold your data and goes away with the job: add "
                '--base-dir "$PWD" to the job\'s command (relative paths then mean the folder '
                "you submit from, on a cluster on this machine), submit with `rayops submit`, "
                "or write an s3:// URI or an absolute path every node shares"
            )


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, key: str) -> Any:
    """``${NAME}`` and ``${NAME:-default}`` in string values, from the environment of the
    process that loads the config (a job's driver resolves them once; workers get values).
    As in the shell, ``:-`` takes the default when the variable is unset *or empty*."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def resolve(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if default is not None:
            return os.environ.get(name) or default
        if name in os.environ:
            return os.environ[name]
        raise ConfigError(
            f"{key}: {value!r} names the environment variable {name}, which "
            f"is not set here; set it or write ${{{name}:-default}}"
        )

    return _ENV_REFERENCE.sub(resolve, value)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {loc}: unknown key{hint}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(err.get("input"), dict) and err["type"] == "value_error":
            # a check across the keys of a section: the message names the keys and values
            lines.append(f"  {loc if err['loc'] else 'config'}: {msg}")
            continue
        shown = repr(err.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc}: {msg} (got {shown})")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc``, walking models and dict values."""
    annotation: Any = PipelineConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional[...] and Annotated[...] around a model type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: what is wrong and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return (
        problem if mark is None else f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    )
