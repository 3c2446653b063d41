"""Import a file as a new dataset version: read, detect, validate, normalize, write.

By default a file with any bad record is refused whole and the error lists the problems, so a
dataset never silently loses rows; `skip_invalid` imports the good rows and returns the skipped ones.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunelab import workspace
from tunelab.datasets import formats, inspection, store
from tunelab.errors import UserError

Progress = Callable[[float, str], None]
SHOWN_PROBLEMS = 50  # the report lists this many problems, then the count of the rest
KEPT_PROBLEMS = 10_000  # skipped records listed in the result (the rest are counted)
DETECT_RECORDS = 200  # records read ahead to detect the format


@dataclass
class ImportResult:
    version: store.DatasetVersion
    detected_format: str
    skipped: list[formats.Problem] = field(default_factory=list)  # the first KEPT_PROBLEMS of them
    records: int = 0
    skipped_count: int = 0

    def to_dict(self) -> dict:
        return {**self.version.summary(), "detected_format": self.detected_format, "records": self.records,
                "imported": self.version.rows, "skipped": self.skipped_count,
                "skipped_records": [{"where": p.where, "reason": p.reason} for p in self.skipped]}


class _Problems:
    """Bad records in file order: all counted, the first KEPT_PROBLEMS kept (a hostile file may hold
    millions). Reading and validating hand theirs in separately, since detection reads ahead."""

    def __init__(self):
        self.read: list[formats.Problem] = []
        self.invalid: list[formats.Problem] = []
        self.count = 0

    def keep(self, kept: list[formats.Problem]) -> Callable[[formats.Problem], None]:
        def add(problem: formats.Problem) -> None:
            self.count += 1
            if len(kept) < KEPT_PROBLEMS:
                kept.append(problem)
        return add

    def first(self) -> list[formats.Problem]:
        return sorted(self.read + self.invalid, key=_order)[:KEPT_PROBLEMS]

    def report(self, name: str, total: int, hint: str) -> str:
        lines = [f"{name}: {self.count} bad record{'s' * (self.count != 1)} of {total}{hint}:"]
        lines += [f"  {p}" for p in self.first()[:SHOWN_PROBLEMS]]
        if self.count > SHOWN_PROBLEMS:
            lines.append(f"  ... and {self.count - SHOWN_PROBLEMS} more")
        return "\n".join(lines)


def import_file(db, ws, path, name: str, fmt: str = "auto", mapping=None, skip_invalid: bool = False,
                progress: Progress | None = None, source_name: str | None = None) -> ImportResult:
    """Import `path` as the next version of dataset `name`. `source_name` overrides the recorded file
    name (the page saves uploads to a temporary file).

    The file is streamed: records are read, validated and written to the version's temporary folder
    one at a time, so memory stays flat however large the file. Whether the file is good is known only
    at its end, so the row generator raises there, and the store removes what it wrote."""
    report = progress or (lambda f, m: None)
    path = Path(path)
    label = source_name or path.name
    store.check_name(name)
    if fmt != "auto" and fmt not in formats.FORMATS:
        raise UserError(f"--format {fmt!r}: choose auto or one of {', '.join(formats.FORMATS)}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    formats.file_type(path)
    limit_mb = workspace.get_setting(db, "upload_limit_mb")
    size = path.stat().st_size
    if size > limit_mb * 1024 * 1024:
        raise UserError(f"{label}: {size / 2**20:.1f} MB is over the upload limit of {limit_mb} MB "
                        "(setting upload_limit_mb)")
    mapping = formats.parse_mapping(mapping)

    report(0.0, f"reading {label}")
    with open(path, "rb") as fh:
        source_hash = hashlib.file_digest(fh, "sha256").hexdigest()
    problems = _Problems()
    records = formats.read_records(path, label, problems.keep(problems.read),
                                   progress=lambda f: report(0.95 * f, f"validating {label}"))
    head = list(itertools.islice(records, DETECT_RECORDS))
    if not head:  # no record was readable: say why, rather than that no format fits
        raise UserError(problems.report(label, problems.count, "; nothing imported"))
    detected = formats.detect(head, mapping, label) if fmt == "auto" else fmt
    imported = 0

    def rows():
        nonlocal imported
        for row in formats.normalize(itertools.chain(head, records), detected, mapping,
                                     problems.keep(problems.invalid)):
            imported += 1
            yield row
        if problems.count and not skip_invalid:
            raise UserError(problems.report(label, imported + problems.count,
                                            f" (read as {detected}); nothing imported. Fix them, or pass "
                                            f"--skip-invalid to import the {imported} good ones"))
        if not imported:
            raise UserError(problems.report(label, problems.count, f" (read as {detected}); no good records"))

    def summary() -> dict:
        return {"records": imported + problems.count, "imported": imported, "skipped": problems.count,
                "skipped_examples": [str(p) for p in problems.first()[:SHOWN_PROBLEMS]]}

    version = store.write_version(
        db, ws, name, {"train": rows()}, formats.KIND_OF_FORMAT[detected], "import",
        {"format": fmt, "mapping": mapping, "skip_invalid": skip_invalid}, source_name=label,
        source_hash=source_hash, fmt=detected, report=summary)
    report(1.0, f"imported {imported:,} rows as {version.ref}")
    return ImportResult(version, detected, problems.first(), imported + problems.count, problems.count)


def _order(problem: formats.Problem) -> tuple[int, str]:
    number = problem.where.rsplit(" ", 1)[-1]
    return (int(number) if number.isdigit() else 0, problem.where)


def register_rows(db, ws, name: str, rows: list[dict], kind: str, transform: str, params: dict,
                  parent: str | None = None, source: str | None = None) -> store.DatasetVersion:
    """Write rows that code produced (e.g. feedback votes) as a new version, after checking they are canonical."""
    formats.check_canonical(rows, kind)
    return store.write_version(db, ws, name, {"train": rows}, kind, transform, params, parent=parent,
                               source_name=source, report={"rows": len(rows)})


def read_rows(path, fmt: str = "auto", name: str | None = None) -> list[dict]:
    """The canonical rows of a file that feeds something other than a dataset version (gold pairs, a
    campaign's prompts): read, detected and validated as import does it, except that the first bad
    record raises a UserError naming the file (`name`, for an upload saved under another) and its line."""
    path = Path(path)
    label = name or path.name
    if fmt != "auto" and fmt not in formats.FORMATS:
        raise UserError(f"format {fmt!r}: choose auto or one of {', '.join(formats.FORMATS)}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    records = formats.read_records(path, label)
    head = list(itertools.islice(records, DETECT_RECORDS)) if fmt == "auto" else []
    detected = formats.detect(head, {}, label) if fmt == "auto" else fmt

    def refuse(problem: formats.Problem):
        raise UserError(f"{label}: {problem} (read as {detected})") from None
    return list(formats.normalize(itertools.chain(head, records), detected, {}, refuse))


def read_prompts(path, name: str | None = None) -> list[list[dict]]:
    """Prompt message lists from a file: a .txt file holds one prompt a line; any file import reads
    gives the prompt turns of its rows, whatever its kind (a `prompt` or `instruction` column, a chat
    ending with the user, or an SFT, preference or KTO dataset)."""
    path = Path(path)
    if path.suffix.lower() != ".txt":
        return [inspection.prompt_messages(row) for row in read_rows(path, name=name)]
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return [[{"role": "user", "content": text.rstrip("\r\n")}]
            for _, text in formats.text_lines(path, name or path.name) if text.strip()]
