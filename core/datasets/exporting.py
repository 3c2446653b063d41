"""Export a version for TRL and the Hugging Face stack: JSONL (TRL's conversational formats, which the
canonical rows already are), Parquet, or a `datasets.save_to_disk` folder.

`out` is a file (`x.jsonl`, `x.parquet`) when the version has one split, else a folder holding one
file per split; for `hf` it is always the folder of a DatasetDict.
"""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from tunelab import workspace
from tunelab.datasets import store
from tunelab.errors import UserError

EXPORT_FORMATS = ("jsonl", "trl", "parquet", "hf")
SUFFIX = {"jsonl": ".jsonl", "trl": ".jsonl", "parquet": ".parquet"}


def _hf_split(rows: list[dict]):
    from datasets import Dataset
    return Dataset.from_list(rows)


def export(db, ws, ref: str, fmt: str, out) -> list[Path]:
    """Write `ref` to `out` in `fmt`; returns the paths written. Each file goes through
    `workspace.write_export`: never inside the workspace (except exports/), never half-written."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    version = store.resolve(db, ws, ref)
    out = workspace.export_target(ws, out)
    if fmt == "hf":
        from datasets import DatasetDict
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out}: already exists; choose a new folder")
        data = DatasetDict({s: _hf_split(version.load(s)) for s in version.splits})
        return [workspace.write_export(ws, out, lambda tmp: data.save_to_disk(str(tmp)))]
    suffix = SUFFIX[fmt]
    single = out.suffix == suffix
    if single and len(version.splits) > 1:
        raise UserError(f"{out}: {version.ref} has {len(version.splits)} splits ({', '.join(version.splits)}); "
                        "give a folder, which gets one file per split")
    files = version.files  # checked against the content hash
    targets = {next(iter(files)): out} if single else {s: out / f"{s}{suffix}" for s in files}

    def write(tmp: Path, split: str) -> None:
        if suffix == ".jsonl":
            shutil.copyfile(files[split], tmp)
        else:
            _hf_split(version.load(split)).to_parquet(str(tmp))
    return [workspace.write_export(ws, path, partial(write, split=split)) for split, path in targets.items()]
