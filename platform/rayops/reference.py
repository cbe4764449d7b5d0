"""Reference pages generated from the code, so that they cannot drift from it: every config
key from the pydantic models (type, default, description) and every command from the Typer
app (usage, arguments, options, help). The docs site (``docs/hooks.py``) writes them into
``docs/reference/``."""

from __future__ import annotations

import enum
import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def config_reference() -> str:
    """Markdown: one table per section of the pipeline config, nested sections after it."""
    from rayops.config.pipeline import PipelineConfig

    out = [_table("", PipelineConfig, top=True)]
    for key, model in _sections(PipelineConfig, ""):
        out.append(f"## `{key}`\n")
        if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
            out.append(" ".join(model.__doc__.split()) + "\n")
        out.append(_table(key, model))
    return "\n".join(out)


def cli_reference() -> str:
    """Markdown: every ``rayops`` command, its usage, arguments and options."""
    import typer

    from rayops.cli import app

    root = typer.main.get_command(app)
    out: list[str] = []
    for path, command in commands(root):
        out.append(f"## `{path}`\n")
        if command.help:
            out.append(_clean(command.help) + "\n")
        with command.context_class(command, info_name=path) as ctx:
            usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), command.get_usage(ctx))
            out.append(f"```text\n{usage.removeprefix('Usage: ')}\n```\n")
            rows = [row for p in command.get_params(ctx) if (row := _param_row(p, ctx))]
        if rows:
            out.append("| argument or option | help |\n| --- | --- |")
            out.extend(f"| {name} | {text} |" for name, text in rows)
            out.append("")
    return "\n".join(out)


def commands(command: Any, path: str = "rayops", hidden: bool = False) -> list[tuple[str, Any]]:
    """``(path, command)`` for the root and every leaf command of a Typer app's click command
    (Typer's click may be its own copy: duck-typed); hidden commands only if asked."""
    group = hasattr(command, "commands")
    found = [(path, command)] if not group or path == "rayops" else []
    if group:
        for name in sorted(command.commands):
            sub = command.commands[name]
            if hidden or not sub.hidden:
                found.extend(commands(sub, f"{path} {name}", hidden))
    return found


def _param_row(param: Any, ctx: Any) -> tuple[str, str] | None:
    if getattr(param, "hidden", False):
        return None
    if param.param_type_name == "argument":
        name = f"`{(param.metavar or param.name).upper()}`"
        text = getattr(param, "help", None) or ""
    else:
        record = param.get_help_record(ctx)
        if record is None:
            return None
        name, text = f"`{record[0]}`", record[1]
    return name.replace("|", "\\|"), _clean(text).replace("|", "\\|")


def _clean(text: str) -> str:
    return " ".join(text.replace("\b", "").split())


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    found = []
    for name in model.model_fields:
        for nested in _models(model.model_fields[name].annotation):
            key = f"{prefix}{name}"
            found.append((key, nested))
            found.extend(_sections(nested, f"{key}."))
    return found


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models(arg):
            if model not in found:
                found.append(model)
    return found


def _table(prefix: str, model: type[BaseModel], top: bool = False) -> str:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        nested = _models(field.annotation)
        text = field.description or ""
        if nested and not text:
            text = f"see [`{key}`](#{key.replace('.', '')})"
        if top and field.is_required():
            text = f"**required.** {text}"
        rows.append(
            f"| `{key}` | {_type(field.annotation)} | {_default(field)} | "
            f"{_escape(' '.join(text.split()))} |"
        )
    return "\n".join(rows) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _type(annotation: Any) -> str:
    return _escape(_type_name(annotation))


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        name = " or ".join(_type_name(a) for a in kept)
        return f"{name} or null" if len(kept) < len(args) else name
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        if issubclass(annotation, enum.Enum):
            return " / ".join(f"`{m.value}`" for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return ""
    if field.default_factory is not None:
        factory: Any = field.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            return ""
        value = factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
    return _escape(f"`{shown}`") if shown != "" else '`""`'
