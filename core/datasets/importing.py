"""Import a file as a new dataset version: read, detect, validate, normalize, write.

By default a file with any bad record is refused whole and the error lists the problems, so a
dataset never silently loses rows; `skip_invalid` imports the good rows and returns the skipped ones.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import workspace
from core.datasets import formats, store
from core.errors import UserError

Progress = Callable[[float, str], None]
SHOWN_PROBLEMS = 50  # the report lists this many problems, then the count of the rest


@dataclass
class ImportResult:
    version: store.DatasetVersion
    detected_format: str
    skipped: list[formats.Problem] = field(default_factory=list)
    records: int = 0

    def to_dict(self) -> dict:
        return {**self.version.summary(), "detected_format": self.detected_format, "records": self.records,
                "imported": self.version.rows, "skipped": len(self.skipped),
                "skipped_records": [{"where": p.where, "reason": p.reason} for p in self.skipped]}


def problems_report(name: str, problems: list[formats.Problem], total: int, hint: str = "") -> str:
    lines = [f"{name}: {len(problems)} bad record{'s' * (len(problems) != 1)} of {total}{hint}:"]
    lines += [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
    return "\n".join(lines)


def import_file(db, ws, path, name: str, fmt: str = "auto", mapping=None, skip_invalid: bool = False,
                progress: Progress | None = None, source_name: str | None = None) -> ImportResult:
    """Import `path` as the next version of dataset `name`. `source_name` overrides the recorded file
    name (the page saves uploads to a temporary file)."""
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
    source_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    records, problems = formats.read_records(path)
    detected = formats.detect(records, mapping, label) if fmt == "auto" else fmt
    report(0.2, f"validating as {detected}")
    rows, bad = formats.normalize(records, detected, mapping,
                                  progress=lambda f, m: report(0.2 + 0.6 * f, m))
    problems = sorted(problems + bad, key=_order)
    total = len(records) + len([p for p in problems if p.reason.startswith(("not JSON", "encoding error"))])
    if problems and not skip_invalid:
        raise UserError(problems_report(label, problems, total, f" (read as {detected}); nothing imported. "
                                        f"Fix them, or pass --skip-invalid to import the {len(rows)} good ones"))
    if not rows:
        raise UserError(problems_report(label, problems, total, f" (read as {detected}); no good records"))
    kind = formats.KIND_OF_FORMAT[detected]
    report(0.85, f"writing {len(rows):,} rows")
    version = store.write_version(
        db, ws, name, {"train": rows}, kind, "import",
        {"format": fmt, "mapping": mapping, "skip_invalid": skip_invalid}, source_name=label,
        source_hash=source_hash, fmt=detected,
        report={"records": total, "imported": len(rows), "skipped": len(problems),
                "skipped_examples": [str(p) for p in problems[:SHOWN_PROBLEMS]]})
    report(1.0, f"imported {len(rows):,} rows as {version.ref}")
    return ImportResult(version, detected, problems, total)


def _order(problem: formats.Problem) -> tuple[int, str]:
    number = problem.where.rsplit(" ", 1)[-1]
    return (int(number) if number.isdigit() else 0, problem.where)


def register_rows(db, ws, name: str, rows: list[dict], kind: str, transform: str, params: dict,
                  parent: str | None = None, source: str | None = None) -> store.DatasetVersion:
    """Write rows that code produced (e.g. feedback votes) as a new version, after checking they are canonical."""
    formats.check_canonical(rows, kind)
    return store.write_version(db, ws, name, {"train": rows}, kind, transform, params, parent=parent,
                               source_name=source, report={"rows": len(rows)})
