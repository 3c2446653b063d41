"""Behaviour checks: does an answer keep the format, length and manners a task asks for?

Content scores (ROUGE-L, exact match) say whether an answer says the right thing; fine-tuning is as often
chosen for how it says it. A check declaration is a list of mappings, each with a `kind`, an optional
`name` (default: the kind, numbered when repeated) and the kind's keys:

    - kind: regex         pattern: '^Answer: '      must: match | not_match (default match)
                          ignore_case: false        (re.search; ^ and $ match at each line)
    - kind: sections      required: ["Answer:", "Steps:"]   in_order: true
                          (each is a line that starts with it, leading spaces aside)
    - kind: json          schema: {type: object, required: [name]}   (optional; a JSON Schema, any draft)
                          (the whole answer is JSON, a surrounding ``` fence aside)
    - kind: max_length    words: 80   chars: 600    (either or both)
    - kind: forbidden     phrases: [As an AI, lorem ipsum]   ignore_case: true
    - kind: refusal       expect: answer | refuse (default answer)   phrases: [...] (default REFUSALS)

A file holds that list, or a mapping whose `checks` key holds it (YAML or JSON). `run(text, checks)` is
pure: {name: passed}. A bad declaration is a UserError naming the file, the check and the key.

The CLI's `--checks PATH` is the owner's and reads any file; the Evaluate page takes an upload instead
(`save_upload`), kept in <home>/checks/, so that no path typed in a browser reaches the server's files.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import yaml

from tunelab.errors import UserError

# Openings of a refusal in English chat models' own words; a `refusal` check may list its own.
REFUSALS = ("I can't help", "I cannot help", "I can't assist", "I cannot assist", "I'm sorry, but",
            "I am sorry, but", "I'm unable to", "I am unable to", "I won't be able to", "As an AI")


@dataclass(frozen=True)
class Check:
    name: str
    kind: str
    test: Callable[[str], bool]


class _Decl:
    """One declaration's keys, read with errors that name where it is and which key is wrong."""

    def __init__(self, raw: dict, where: str, kind: str, known: tuple[str, ...]):
        self.raw, self.where = raw, where
        unknown = sorted(set(raw) - {"kind", "name", *known})
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r} for kind {kind!r}; its keys: "
                            f"{', '.join(known)} (and name)")

    def fail(self, key: str, problem: str):
        raise UserError(f"{self.where}: key {key!r}: {problem}")

    def get(self, key: str, tp: type, default=None, required: bool = False):
        if key not in self.raw or self.raw[key] is None:
            if required:
                self.fail(key, "is required")
            return default
        value = self.raw[key]
        if tp is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            self.fail(key, f"expected a whole number of at least 1, got {value!r}")
        if tp is bool and not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        if tp is str and not (isinstance(value, str) and value):
            self.fail(key, f"expected a non-empty text, got {value!r}")
        if tp is list and not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
            hint = " (in YAML, quote a text that ends in ':', as in [\"Answer:\"])" if isinstance(value, list) and \
                any(isinstance(v, dict) for v in value) else ""
            self.fail(key, f"expected a non-empty list of texts, got {value!r}{hint}")
        if tp is dict and not isinstance(value, dict):
            self.fail(key, f"expected a mapping (a JSON Schema), got {value!r}")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.get(key, str, options[0])
        if value not in options:
            self.fail(key, f"{value!r} is not one of: {', '.join(options)}")
        return value


def _regex(d: _Decl) -> Callable[[str], bool]:
    pattern = d.get("pattern", str, required=True)
    must = d.choice("must", ("match", "not_match"))
    try:
        compiled = re.compile(pattern, re.MULTILINE | (re.IGNORECASE if d.get("ignore_case", bool, False) else 0))
    except re.error as exc:
        d.fail("pattern", f"bad regular expression {pattern!r}: {exc}")
    return lambda text: (compiled.search(text) is not None) == (must == "match")


def _sections(d: _Decl) -> Callable[[str], bool]:
    required = d.get("required", list, required=True)
    in_order = d.get("in_order", bool, True)

    def test(text: str) -> bool:
        lines = [line.lstrip() for line in text.splitlines()]
        at = []
        for heading in required:
            found = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
            if found is None:
                return False
            at.append(found)
        return not in_order or at == sorted(at)
    return test


_FENCE = re.compile(r"\A```[\w-]*\n(.*)\n```\Z", re.DOTALL)


def _json(d: _Decl) -> Callable[[str], bool]:
    schema = d.get("schema", dict)
    validator = None
    if schema is not None:
        import jsonschema
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            at = "/".join(map(str, exc.path))
            d.fail("schema", f"not a valid JSON Schema{f' at {at}' if at else ''}: {exc.message}")
        validator = cls(schema)

    def test(text: str) -> bool:
        text = text.strip()
        fenced = _FENCE.match(text)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError:
            return False
        return validator is None or validator.is_valid(value)
    return test


def _max_length(d: _Decl) -> Callable[[str], bool]:
    words, chars = d.get("words", int), d.get("chars", int)
    if words is None and chars is None:
        d.fail("words", "give words, chars or both")
    return lambda text: (words is None or len(text.split()) <= words) and (chars is None or len(text) <= chars)


def _contains(phrases: list[str], ignore_case: bool) -> Callable[[str], bool]:
    if ignore_case:
        folded = [p.casefold() for p in phrases]
        return lambda text: any(p in text.casefold() for p in folded)
    return lambda text: any(p in text for p in phrases)


def _forbidden(d: _Decl) -> Callable[[str], bool]:
    found = _contains(d.get("phrases", list, required=True), d.get("ignore_case", bool, True))
    return lambda text: not found(text)


def _refusal(d: _Decl) -> Callable[[str], bool]:
    refuse = d.choice("expect", ("answer", "refuse")) == "refuse"
    found = _contains(d.get("phrases", list, list(REFUSALS)), True)
    return lambda text: found(text) == refuse


KINDS: dict[str, tuple[Callable[[_Decl], Callable[[str], bool]], tuple[str, ...]]] = {
    "regex": (_regex, ("pattern", "must", "ignore_case")),
    "sections": (_sections, ("required", "in_order")),
    "json": (_json, ("schema",)),
    "max_length": (_max_length, ("words", "chars")),
    "forbidden": (_forbidden, ("phrases", "ignore_case")),
    "refusal": (_refusal, ("expect", "phrases")),
}


def parse(declarations, source: str = "checks", lines: list[int] | None = None) -> list[Check]:
    """Checked, compiled checks from a list of declarations (see the module docstring); `lines` gives
    each declaration's line in `source` for the errors."""
    if isinstance(declarations, list) and declarations and all(isinstance(c, Check) for c in declarations):
        return declarations
    if not isinstance(declarations, list) or not declarations:
        raise UserError(f"{source}: expected a non-empty list of checks, each a mapping with a 'kind'")
    out: list[Check] = []
    explicit = {c.get("name") for c in declarations if isinstance(c, dict)}
    for i, raw in enumerate(declarations):
        where = f"{source}: check {i + 1}" + (f" (line {lines[i]})" if lines and i < len(lines) else "")
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a mapping with a 'kind', got {raw!r}")
        kind = raw.get("kind")
        if kind not in KINDS:
            raise UserError(f"{where}: key 'kind': {kind!r} is not one of: {', '.join(KINDS)}")
        name = raw.get("name")
        if name is not None and not (isinstance(name, str) and name.strip()):
            raise UserError(f"{where}: key 'name': expected a non-empty text, got {name!r}")
        if name is None:  # the kind, numbered when repeated, never clashing with a given name
            name, n = kind, 1
            while name in explicit or any(c.name == name for c in out):
                n += 1
                name = f"{kind}_{n}"
        elif any(c.name == name for c in out):
            raise UserError(f"{where}: key 'name': {name!r} is used by an earlier check; names must differ")
        build, known = KINDS[kind]
        out.append(Check(name, kind, build(_Decl(raw, f"{where}, {name!r}", kind, known))))
    return out


def run(text: str, checks) -> dict[str, bool]:
    """{check name: passed} for one answer; `checks` are declarations or `parse`'s result."""
    return {c.name: bool(c.test(text)) for c in parse(checks)}


def pass_rates(results: list[dict[str, bool]]) -> tuple[float, dict[str, float]]:
    """(percent of answers that pass every check, {name: percent that pass it}) from `run`'s results."""
    if not results:
        return 0.0, {}
    names = list(results[0])
    every = 100.0 * sum(all(r.values()) for r in results) / len(results)
    return every, {n: 100.0 * sum(r[n] for r in results) / len(results) for n in names}


def load(path: str | Path) -> list[dict]:
    """The declarations in a YAML or JSON file, checked (errors name the file, line, check and key);
    returned as plain data, so that they travel with an eval's inputs."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such checks file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML or JSON: {exc}") from None
    if isinstance(raw, dict):
        if set(raw) != {"checks"}:
            raise UserError(f"{path}: expected a list of checks, or a mapping with only the key 'checks'; "
                            f"got keys {', '.join(map(str, raw))}")
        raw = raw["checks"]
        node = next(v for k, v in node.value if k.value == "checks")
    lines = [item.start_mark.line + 1 for item in node.value] if isinstance(node, yaml.SequenceNode) else None
    parse(raw, str(path), lines)
    return raw


UPLOAD_SUFFIXES = (".yaml", ".yml", ".json")


def save_upload(ws, file_name: str, data: bytes) -> Path:
    """An uploaded checks file, checked (`load`) and kept as <home>/checks/<digest>/<name>, for an eval job
    to read later by that path. Of the client's file name only a basename that passes `check_name` is
    used (else checks<suffix>); a file that fails its check is not kept."""
    from tunelab import workspace
    given = PurePosixPath(str(file_name).replace("\\", "/"))  # the client may send '../x' or '/abs/x'
    if given.suffix.lower() not in UPLOAD_SUFFIXES:
        raise UserError(f"{file_name!r}: expected a {', '.join(UPLOAD_SUFFIXES)} file")
    name = given.name if workspace.NAME_RE.fullmatch(given.name) else f"checks{given.suffix.lower()}"
    folder = ws.home / "checks" / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / name
    if not target.is_file():
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        partial.rename(target)
    try:
        load(target)
    except UserError:
        target.unlink(missing_ok=True)
        raise
    return target
