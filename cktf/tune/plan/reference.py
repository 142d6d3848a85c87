"""The field reference of a study file, generated from the schema (``cktf schema --markdown``).

``docs/studies.md`` embeds this table between two markers and a test keeps it current, so every field the schema
accepts is documented with its type, default and description, and nothing documented is missing from the schema.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import annotated_types as annotated
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .schema import StudyConfig

BEGIN, END = "<!-- fields:begin (cktf schema --markdown) -->", "<!-- fields:end -->"
_BOUNDS = ((annotated.Ge, "≥", "ge"), (annotated.Gt, ">", "gt"), (annotated.Le, "≤", "le"), (annotated.Lt, "<", "lt"))


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " \\| ".join(_type_text(a) for a in inner)
        return f"{text} (optional)" if len(inner) < len(args) else text
    if origin in (tuple, list):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_text(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for kind, sign, attr in _BOUNDS:
            if isinstance(meta, kind):
                parts.append(f"{sign} {getattr(meta, attr)}")
        if hasattr(meta, "min_length") and meta.min_length:
            parts.append("not empty")
        if hasattr(meta, "pattern") and meta.pattern:
            parts.append(f"matches `{meta.pattern}`")
    return ", ".join(parts)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [m for a in args if (m := _model_of(a)) is not None]
        return models[0] if len(models) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_rows(
    model: type[BaseModel], prefix: str = "", seen: dict[type, str] | None = None
) -> list[tuple[str, str, str, str]]:
    """``(path, type, default, description)`` of every field of ``model`` and of its sections, depth first; a
    section whose model was listed before (``teacher.optim`` after ``optim``) refers to it instead."""
    seen = {} if seen is None else seen
    rows = []
    for name, field in model.model_fields.items():
        if field.json_schema_extra is not None or name == "source":
            continue
        path = f"{prefix}{name}"
        annotation = field.annotation
        sub = _model_of(annotation)
        if typing.get_origin(annotation) is dict and _model_of(typing.get_args(annotation)[1]):
            sub_model = _model_of(typing.get_args(annotation)[1])
            rows.append((path, f"mapping of name → {sub_model.__name__}", "{}", field.description or ""))
            rows += field_rows(sub_model, f"{path}.<name>.", seen)
            continue
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = "section" if isinstance(value, BaseModel) else f"`{value!r}`".replace("|", "\\|")
        type_text = _type_text(annotation)
        bounds = _bounds(field)
        text = field.description or ""
        if sub is not None and sub in seen:
            text += f" (the fields of `{seen[sub]}`)"
        rows.append((path, type_text + (f" ({bounds})" if bounds else ""), default, text))
        if sub is not None and sub not in seen:
            seen[sub] = path
            rows += field_rows(sub, f"{path}.", seen)
    return rows


def reference_markdown(model: type[BaseModel], markers: tuple[str, str], lists: tuple = ()) -> str:
    """The reference table of a file kind between its two markers: one row per field, dotted paths as ``--set`` takes
    them; ``lists``: ``(field, model)`` of the list fields whose entries are sections of their own (``<i>``)."""
    seen: dict[type, str] = {}
    rows = field_rows(model, "", seen)
    for name, sub in lists:
        pos = next(i for i, r in enumerate(rows) if r[0] == name) + 1
        rows[pos:pos] = field_rows(sub, f"{name}.<i>.", seen)
    lines = [markers[0], "", "| field | type | default | what it is |", "|---|---|---|---|"]
    for path, type_text, default, text in rows:
        text = " ".join(text.split()).replace("|", "\\|")
        lines.append(f"| `{path}` | {type_text} | {default} | {text} |")
    lines += ["", markers[1]]
    return "\n".join(lines) + "\n"


def schema_markdown() -> str:
    """The study file's reference table (docs/studies.md)."""
    return reference_markdown(StudyConfig, (BEGIN, END))


def update_between(path: str, markers: tuple[str, str], table: str) -> bool:
    """Rewrite what lies between the markers of the file ``path`` with ``table``; True when it changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    a, b = text.index(markers[0]), text.index(markers[1]) + len(markers[1])
    new = text[:a] + table.rstrip("\n") + text[b:]
    if new != text:
        p.write_text(new)
    return new != text
