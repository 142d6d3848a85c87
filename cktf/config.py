"""The one base of every config: typed pydantic models, validated in one pass, errors that name the field.

Every config of the project (a dataset, the optimiser, the trainer, each method's fields, the probe, a study file)
is a :class:`Config`: a frozen pydantic v2 model that forbids unknown keys. :meth:`Config.parse` validates a plain
mapping (a YAML file, a ``--set`` list, a Ray Tune config) and turns pydantic's error into one
:class:`~cktf.errors.ConfigError` whose field is the dotted path of the offending key (``search.space.alpha1``),
with the problem and a fix, which the CLI prints as one line.

Validators inside a model raise :class:`~cktf.errors.ConfigError` with a field *relative to that model*
(``ConfigError("low", "must be > 0")`` inside a search-space entry); the location pydantic adds in front of it
makes the full path. Numbers written as strings (YAML reads ``5e-4`` as one) are converted; a fractional value
for an integer field, a word for a number, a typo in a key are each named.

``docs/studies.md`` lists every field of a study file; ``cktf schema`` prints the JSON Schema editors use.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import CKTFError, ConfigError, did_you_mean
from .registry import UnknownNameError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: frozen, no unknown keys, field docstrings become schema descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        validate_default=False,
        arbitrary_types_allowed=False,
    )

    #: the name a standalone config's errors start with (``train`` -> ``train.epochs``)
    section: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        """Direct construction (``TrainConfig(epochs=0)``) raises the same :class:`ConfigError` as :meth:`parse`
        (``train.epochs: ...``); inside a bigger config (pydantic calls this for every nested model it validates)
        the error keeps its full path (``teacher.train.epochs``)."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            inner = config_error(exc, type(self))
            outer = ConfigError(_join(type(self).section, inner.field) or type(self).__name__, inner.problem, inner.fix)
            outer.relative = inner.field
            raise outer from None

    @classmethod
    def parse(cls: type[C], data: Any, where: str | None = None) -> C:
        """Validate ``data`` (a mapping, or an instance) into this config; errors name ``where.<field path>``
        (``where`` defaults to the config's :attr:`section`)."""
        where = cls.section if where is None else where
        if isinstance(data, cls):
            return data
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(where or cls.__name__, f"must be a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            err = config_error(exc, cls, where)
            raise (err if err.field else ConfigError(cls.__name__, err.problem, err.fix)) from None

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with ``changes`` applied (``model_copy`` would skip validation)."""
        return type(self).parse({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible values (tuples become lists)."""
        return self.model_dump(mode="json")


def as_written(out: dict[str, Any], sources: Mapping[str, str]) -> dict[str, Any]:
    """``out`` (a config's ``to_dict()``) with each field read from the environment put back as written
    (``{dotted path: "${VAR}"}``), so that a logged config never holds an expanded secret; ``out`` is changed."""
    for path, raw in sources.items():
        node: Any = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.get(p, {})
        if isinstance(node, list):
            node[int(leaf)] = raw
        elif isinstance(node, dict) and leaf in node:
            node[leaf] = raw
    return out


def lookup(field: str, get: Any, name: str) -> Any:
    """A registry lookup whose error is a :class:`ConfigError` on ``field`` (validators cannot raise KeyError)."""
    try:
        return get(name)
    except UnknownNameError as exc:
        raise ConfigError(field, str(exc)) from None


# ------------------------------------------------------------------------------------------- errors


def config_error(exc: ValidationError, model: type[BaseModel], where: str = "") -> ConfigError:
    """The first error of ``exc`` as a :class:`ConfigError` on its dotted path (plus how many more there are)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = [str(p) for p in err["loc"]]
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):
        path = _join(where, *loc, inner.relative if hasattr(inner, "relative") else inner.field)
        problem, fix = inner.problem, inner.fix
    elif isinstance(inner, CKTFError):
        path, problem, fix = _join(where, *loc), str(inner), ""
    else:
        path = _join(where, *loc)
        problem, fix = _describe(err, model, loc)
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after it)"
    return ConfigError(path, problem, fix)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _describe(err: Mapping[str, Any], model: type[BaseModel], loc: Sequence[str]) -> tuple[str, str]:
    """Problem and fix of one of pydantic's own errors, in the project's words."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = model_at(model, loc[:-1])
        known = list(parent.model_fields) if parent is not None else []
        hint = did_you_mean(loc[-1], known, "") if loc else ""
        if hint:
            return f"unknown field ({hint})", f"known fields: {', '.join(known)}"
        return "unknown field", (f"known fields: {', '.join(known)}" if known else "check the spelling (cktf schema)")
    if kind == "missing":
        return "missing", "this field is required"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
        return f"must be a number, got {value!r}", ""
    if kind == "int_from_float":
        return f"must be a whole number, got {value!r}", ""
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {value!r}", ""
    if kind in ("string_type",):
        return f"must be a string, got {value!r}", ""
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {type(value).__name__}", ""
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {value!r}", ""
    if kind == "literal_error":
        return f"got {value!r}", f"use one of {ctx.get('expected', '')}"
    for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if (
            kind.startswith(
                {"ge": "greater_than_equal", "gt": "greater_than", "le": "less_than_equal", "lt": "less_than"}[bound]
            )
            and bound in ctx
        ):
            return f"must be {op} {ctx[bound]}, got {value!r}", ""
    return str(err.get("msg", kind)), ""


def model_at(model: type[BaseModel] | None, loc: Sequence[str]) -> type[BaseModel] | None:
    """The model class found by walking ``loc`` (field names; keys of dict fields) from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = _unwrap(field.annotation)
        elif isinstance(current, tuple) and current[0] == "dict":
            current = current[1]
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """``Optional[X]`` -> X; ``dict[str, X]`` -> ("dict", X); ``Annotated[X, ...]`` -> X."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin in (dict, Mapping):
        return ("dict", _unwrap(typing.get_args(annotation)[1]))
    return annotation


# ------------------------------------------------------------------------------------------- overrides


def parse_assignments(items: Sequence[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["alpha=0.9", "search.num_samples=4"]`` -> ``{"alpha": 0.9, "search.num_samples": 4}`` (JSON values
    where they parse, strings otherwise)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(flag, f"{item!r} is not KEY=VALUE", f"e.g. {flag} alpha=0.9")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def apply_overrides(raw: Any, overrides: Mapping[str, Any], flag: str = "--set") -> dict[str, Any]:
    """``raw`` with dotted ``overrides`` written in (``{"data.root": "x"}`` sets ``raw["data"]["root"]``); a numeric
    part indexes a list (``methods.2.params.nce_k``). ``raw`` is not changed.

    ``raw`` must be a mapping; a dotted key that runs through a plain value, or past the end of a list, is refused
    with its name.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "file", f"the file must hold a mapping of fields, got {type(raw).__name__}", "see studies/quickstart.yaml"
        )
    out = json.loads(json.dumps(raw, default=str)) if overrides else dict(raw)
    for dotted, value in overrides.items():
        node: Any = out
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            where = ".".join(parents[: i + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, where, f"{flag} {dotted}")]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(
                    where,
                    f"is {child!r}, so {flag} {dotted}=... cannot set a field inside it",
                    f"set the whole value, e.g. {flag} {where}={{...}}",
                )
            node = child
        if isinstance(node, list):
            node[_list_index(node, leaf, dotted, f"{flag} {dotted}")] = value
        else:
            node[leaf] = value
    return out


def _list_index(node: list, part: str, where: str, what: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(where, f"the list has {len(node)} entries, so {what} cannot address it", "index from 0")
    return int(part)
