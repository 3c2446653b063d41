"""One bridge from a config dataclass to YAML keys, CLI flags and form fields, with one type checker.

A config is a dataclass whose fields carry `metadata["help"]` (and optionally "choices", "min", "max"),
as TRL's configs do. Everything else comes from here:

    from_mapping(cls, raw, source, places)  -> cls   every key checked; errors name the file, line or flag and key
    add_flags(parser, cls)                  one --key option per field (--block.key for a nested dataclass)
    from_flags(cls, args) / given(args)     the flags a user gave, checked exactly as YAML keys are
    form_fields(cls)                        name, kind, default, help, choices: what a page draws (pages/_ui.py)

Why not transformers' HfArgumentParser (or TRL's TrlParser, built on it)? Checked with transformers 5 and
TRL 1.16: it hands the whole field metadata to argparse, so our "min"/"choices" keys crash it; it has no
nested dataclasses (`lora.r`) and no `str | list[str]` union; its `parse_dict` and TrlParser's YAML defaults
skip type checks (`max_new_tokens: "ten"` passes); and its errors are argparse or ValueError messages
with no file, line or key. The checker below is the one `tunelab train` already had, made generic.

Flags and text boxes are text: their text is read as a YAML value (`1e-4`, `16`, `true`, `[q_proj, v_proj]`),
except for a key that takes text, which keeps the text as typed; a list key also takes `a, b`. Then the
value goes through the same checker as a YAML value.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from functools import cache

import yaml

from tunelab.errors import UserError

_DEST = "config:"  # argparse dest prefix that marks config flags in a Namespace
_NO = object()


# ---------------------------------------------------------------- types

@cache
def hints(cls: type) -> dict[str, object]:
    """Field name -> its real type (string annotations resolved, as `from __future__ import annotations` leaves them)."""
    return typing.get_type_hints(cls)


def _options(tp) -> tuple:
    """The alternatives of a union (`int | None` -> (int, NoneType)); a plain type is its own only option."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _literal(tp) -> tuple | None:
    for option in _options(tp):
        if typing.get_origin(option) is typing.Literal:
            return typing.get_args(option)
    return None


def _nested(tp) -> type | None:
    """The dataclass of a nested block such as `lora`, else None."""
    return next((o for o in _options(tp) if dataclasses.is_dataclass(o)), None)


def choices(f: dataclasses.Field, tp) -> tuple | None:
    return tuple(f.metadata["choices"]) if "choices" in f.metadata else _literal(tp)


def type_name(tp) -> str:
    """`int`, `int | None`, `list[str]`: as the annotation reads."""
    plain = typing.get_origin(tp) is None and getattr(tp, "__name__", None)
    return plain or str(tp).replace("typing.", "")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def check(value, tp, f: dataclasses.Field, where: str):
    """`value` converted to the field's type (`tp`, from `hints`), or a UserError that starts with `where`."""
    options = _options(tp)
    if value is None:
        if type(None) in options:
            return None
        raise UserError(f"{where}: must be set (a {type_name(tp)})")
    converted = _NO
    for option in options:
        converted = _convert(value, option)
        if converted is not _NO:
            break
    if converted is _NO:
        raise UserError(f"{where}: expected {type_name(tp)}, got {type(value).__name__} {value!r}")
    allowed, meta = choices(f, tp), f.metadata
    if allowed is not None and converted not in allowed:
        raise UserError(f"{where}: {converted!r} is not one of: {', '.join(map(str, allowed))}")
    if "min" in meta and isinstance(converted, (int, float)) and converted < meta["min"]:
        raise UserError(f"{where}: must be at least {meta['min']}, got {converted!r}")
    if "max" in meta and isinstance(converted, (int, float)) and converted > meta["max"]:
        raise UserError(f"{where}: must be at most {meta['max']}, got {converted!r}")
    return converted


def _convert(value, tp):
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if typing.get_origin(tp) is typing.Literal:
        return value if value in typing.get_args(tp) else _NO
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            return _NO
        items = [_convert(v, inner) for v in value]
        return _NO if any(i is _NO for i in items) else items
    return _NO


def from_text(text: str, tp):
    """A flag's or a text box's text as a value for a field of type `tp` (see the module docstring)."""
    options = _options(tp)
    if not text.strip():
        return None if type(None) in options else text
    takes_list = any(typing.get_origin(o) is list for o in options)
    if str in options and not takes_list:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if takes_list and not isinstance(value, list):
        return [t.strip() for t in text.split(",") if t.strip()] if "," in text else text
    return value


# ---------------------------------------------------------------- mappings (YAML, forms, flags)

def from_mapping(cls: type, raw: dict, source: str = "config", places: dict[str, str] | None = None,
                 owner: str = "", prefix: str = ""):
    """`cls` built from a mapping of keys to values, rejecting unknown keys and wrong types.

    `places` maps a dotted key to where it was written (`file: line 3`, `flag --lora.r`) for the error;
    `owner` ends the unknown-key message (" for method 'sft'"); `prefix` is the nested block's `lora.`.
    """
    places = places or {}

    def where(key: str) -> str:
        return f"{places.get(key, source)}: key {key!r}"

    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise UserError(f"{where(name)}: unknown key{owner}{hint}; known keys: {', '.join(fields)}")
        tp = hints(cls)[key]
        block = _nested(tp)
        if block is None:
            values[key] = check(value, tp, fields[key], where(name))
        elif value is None or isinstance(value, block):
            values[key] = value if value is not None else block()
        elif isinstance(value, dict):
            values[key] = from_mapping(block, value, source, places, prefix=f"{name}.")
        else:
            raise UserError(f"{where(name)}: must be a mapping with keys "
                            f"{', '.join(f.name for f in dataclasses.fields(block))}")
    for f in fields.values():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values:
            raise UserError(f"{source}: key {prefix + f.name!r} is required ({f.metadata.get('help', '')})")
    return cls(**values)


def key_lines(text: str, source: str) -> dict[str, str]:
    """Dotted key -> `source: line N` (1-based), from the YAML node tree, for `from_mapping`'s `places`."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[f"{prefix}{k.value}"] = f"{source}: line {k.start_mark.line + 1}"
                walk(v, f"{prefix}{k.value}.")
    walk(node, "")
    return out


def flat(d: dict, prefix: str = "") -> dict:
    """{'lora': {'r': 8}} -> {'lora.r': 8}, for diffs, tables and flags."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(d: dict) -> dict:
    """{'lora.r': 8} -> {'lora': {'r': 8}}: the inverse of `flat`."""
    out: dict = {}
    for key, value in d.items():
        *blocks, last = key.split(".")
        node = out
        for b in blocks:
            node = node.setdefault(b, {})
        node[last] = value
    return out


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` on top, block by block (an override of `lora.r` keeps `lora.alpha`)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------- CLI flags

def add_flags(parser, cls: type, skip=(), required=(), defaults: dict | None = None, aliases: dict | None = None,
              show_defaults: bool = True, prefix: str = "") -> set[str]:
    """One option per field of `cls`, help from its metadata; returns the dotted keys added.

    Each key is spelled `--learning_rate` (TRL's spelling) and `--learning-rate`; a nested block's keys are
    `--lora.r`. Values stay text here and are checked by `from_flags` / `from_mapping`, so a bad value is a
    UserError naming the key (exit 2) as it is in YAML. `defaults` replaces a field's default for this
    command (the value is then always given); `aliases` adds option strings, e.g. {"system_prompt": ["--system"]}.
    """
    defaults, aliases, added = defaults or {}, aliases or {}, set()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if key in skip:
            continue
        tp = hints(cls)[f.name]
        block = _nested(tp)
        if block is not None:
            added |= add_flags(parser, block, skip, required, defaults, aliases, show_defaults, f"{key}.")
            continue
        allowed = choices(f, tp)
        default = defaults.get(key, _default(f))
        help_text = f.metadata.get("help", "")
        if show_defaults and key not in required:
            help_text += f" (default: {default})"
        names = list(dict.fromkeys([f"--{key}", f"--{key.replace('_', '-')}", *aliases.get(key, [])]))
        extra = {"nargs": "?", "const": True} if tp is bool else {}
        parser.add_argument(*names, dest=_DEST + key, required=key in required,
                            default=defaults[key] if key in defaults else argparse.SUPPRESS,
                            type=lambda text, tp=tp: from_text(text, tp), help=help_text.replace("%", "%%"),
                            metavar="{" + ",".join(map(str, allowed)) + "}" if allowed else _metavar(tp), **extra)
        added.add(key)
    return added


def _metavar(tp) -> str:
    options = [o for o in _options(tp) if o is not type(None)]
    return "|".join(("LIST" if typing.get_origin(o) is list else getattr(o, "__name__", "VALUE").upper())
                    for o in options)


def given(args: argparse.Namespace, cls: type | None = None) -> dict:
    """The config keys given as flags (those of `cls` only, when given), nested as YAML blocks are."""
    names = {f.name for f in dataclasses.fields(cls)} if cls else None
    keys = {k[len(_DEST):]: v for k, v in vars(args).items() if k.startswith(_DEST)}
    return nest({k: v for k, v in keys.items() if names is None or k.split(".")[0] in names})


def flag_places(overrides: dict) -> dict[str, str]:
    """`places` for `from_mapping`: each given key was written as `flag --key`."""
    return {k: f"flag --{k}" for k in flat(overrides)}


def from_flags(cls: type, args: argparse.Namespace, base: dict | None = None):
    """`cls` from the flags `add_flags` added (on top of `base`, e.g. a positional argument), checked."""
    overrides = given(args, cls)
    return from_mapping(cls, merge(base or {}, overrides), "command line", flag_places(overrides))


# ---------------------------------------------------------------- form fields

@dataclass(frozen=True)
class FormField:
    """What a page needs to draw one input: `kind` is group (a nested block's heading), choice, bool, int
    (a whole number that must be set) or text (everything else, read back with `value_of`)."""
    name: str
    kind: str
    default: object
    help: str
    choices: tuple | None
    optional: bool
    min: float | None
    max: float | None
    type: object

    @property
    def text(self) -> str:
        """The default as a text box shows it."""
        if self.default is None:
            return ""
        return ", ".join(self.default) if isinstance(self.default, list) else str(self.default)

    def value_of(self, text: str):
        return from_text(text, self.type)


def form_fields(cls: type, skip=(), defaults: dict | None = None, prefix: str = "") -> list[FormField]:
    """The fields of `cls` in declared order, nested blocks flattened as `lora.r` after a group entry."""
    defaults, out = defaults or {}, []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if key in skip:
            continue
        tp = hints(cls)[f.name]
        block, allowed, options = _nested(tp), choices(f, tp), _options(tp)
        meta = f.metadata
        kind = ("group" if block else "choice" if allowed else "bool" if tp is bool else "int" if tp is int
                else "text")
        out.append(FormField(key, kind, defaults.get(key, _default(f)), meta.get("help", ""), allowed,
                             type(None) in options, meta.get("min"), meta.get("max"), tp))
        if block:
            out += form_fields(block, skip, defaults, f"{key}.")
    return out
