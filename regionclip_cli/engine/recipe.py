"""Typed recipes: a YAML file checked against dataclasses before any work starts.

A recipe section is a dataclass; its fields' annotations are the schema. Loading walks the YAML
and the dataclasses together, so an unknown key, a wrong type or a missing required value is one
line naming the key (with a suggestion for typos), never an error deep inside a run.
`--set key.sub=value` overrides are parsed as YAML scalars and checked the same way.
Booleans follow YAML 1.2 (only true/false): PyYAML's YAML 1.1 default would read `amp: off`
as False, not as the word the schema asks for.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from regionclip_cli.core.errors import RegionclipError

T = TypeVar("T")


class RecipeError(RegionclipError):
    pass


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str, origin_name: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (e.g. str -> Path)."""
    def fail() -> RecipeError:
        return RecipeError(f"{origin_name}: {key}: expected {_type_name(tp)}, got {value!r}")

    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise fail()
        for arg in args:
            try:
                return _convert(value, arg, key, origin_name)
            except RecipeError:
                continue
        raise fail()
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{origin_name}: {key}: expected {_type_name(tp)}, got {value!r}{hint}")
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail()
        item = get_args(tp)[0]
        return [_convert(v, item, f"{key}[{i}]", origin_name) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, origin_name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise fail()
    raise TypeError(f"unsupported recipe annotation {tp!r} at {key}")


def build(cls: type[T], data: Any, prefix: str = "", origin_name: str = "recipe") -> T:
    """Instantiate dataclass `cls` from a mapping, checking every key and value."""
    where = prefix or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{origin_name}: {where}: expected a mapping of keys, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
            raise RecipeError(f"{origin_name}: {prefix + '.' if prefix else ''}{key}: unknown key{hint}")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            values[name] = _convert(data[name], hints[name], key, origin_name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                values[name] = build(hints[name], {}, key, origin_name)
            else:
                raise RecipeError(f"{origin_name}: {key}: required key is missing")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:  # a dataclass's own __post_init__ checks
        raise RecipeError(f"{origin_name}: {where}: {error}") from None


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's safe loader (no object construction) with YAML 1.2 booleans."""
    import re

    import yaml

    bool_tag = "tag:yaml.org,2002:bool"

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    RecipeLoader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                       list("tTfF"))
    return RecipeLoader


def _parse_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: safe as yaml.safe_load


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a nested mapping."""
    import yaml

    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. optimizer.lr=0.01")
        try:
            value = _parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_recipe(cls: type[T], path: str | Path, overrides: typing.Sequence[str] = (),
                origin_name: str | None = None) -> T:
    """Read a YAML recipe (safe loader), apply overrides, and check it against `cls`.

    `origin_name` is how errors name the file (default: its path).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    name = origin_name or str(path)
    try:
        data = _parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{name}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{name}: a recipe is a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    return build(cls, data, origin_name=name)


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped inside the package (regionclip_cli/recipes/*.yaml), by name."""
    folder = Path(__file__).resolve().parent.parent / "recipes"
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def find_recipe(name_or_path: str | Path) -> tuple[Path, str]:
    """(file, how errors name it) for a recipe path or the name of a built-in recipe.

    An existing file wins over a built-in of the same name. Relative paths inside any recipe are
    resolved against the current folder, as the run's own outputs are.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path, str(path)
    shipped = builtin_recipes()
    name = path.name.removesuffix(".yaml")
    if name in shipped and path.parent == Path("."):
        return shipped[name], f"built-in recipe {name}"
    close = difflib.get_close_matches(name, list(shipped), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RecipeError(f"{path}: no such recipe file or built-in recipe; {hint}built-in: {', '.join(shipped)}")


def recipe_keys(cls: type) -> list[tuple[str, str, str]]:
    """(dotted key, type, default) of every setting of recipe class `cls`, in schema order."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += [(f"{f.name}.{key}", kind, default) for key, kind, default in recipe_keys(tp)]
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            rows.append((f.name, _type_name(tp), "(required)"))
            continue
        plain = to_plain(default)
        rows.append((f.name, _type_name(tp), plain if isinstance(plain, str) else json.dumps(plain)))
    return rows


def key_origin(origin_name: str, overrides: typing.Sequence[str] = ()) -> typing.Callable[[str], str]:
    """A function naming where a recipe key's value came from: its `--set`, else the file."""
    overridden = {item.partition("=")[0].strip() for item in overrides}

    def origin(key: str) -> str:
        return f"--set {key}" if key in overridden else f"{origin_name}: {key}"

    return origin


def to_plain(recipe: Any) -> Any:
    """A recipe as plain JSON-ready values (Paths as strings), for checkpoints and logs."""
    if dataclasses.is_dataclass(recipe):
        return {f.name: to_plain(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    if isinstance(recipe, (list, tuple)):
        return [to_plain(v) for v in recipe]
    if isinstance(recipe, Path):
        return str(recipe)
    return recipe
