"""Datasets: import (JSON, JSONL, CSV, Parquet; alpaca, ShareGPT, messages, prompt/completion,
preference, KTO, prompts), validation that names every bad record, immutable versions with lineage,
cleaning (dedup, PII), inspection, splits, and export in TRL's formats.

Canonical rows (TRL's conversational formats, so TRL trainers read the files directly):
- sft:        {"messages": [{"role", "content"}, ...]} (+ optional "tools")
- preference: {"prompt": [msgs], "chosen": [assistant msgs], "rejected": [assistant msgs]} (+ optional "margin")
- kto:        {"prompt": [msgs], "completion": [assistant msgs], "label": bool}
- prompts:    {"prompt": [msgs]}
Each version lives in `ws.datasets_dir/<name>/v<N>/` as `<split>.jsonl` files plus `meta.json`.
"""
from tunelab.datasets.cleaning import clean
from tunelab.datasets.exporting import EXPORT_FORMATS, export
from tunelab.datasets.formats import FORMATS, Problem
from tunelab.datasets.importing import ImportResult, import_file, read_prompts, read_rows, register_rows
from tunelab.datasets.inspection import prompt_messages
from tunelab.datasets.splitting import split
from tunelab.datasets.store import DatasetVersion, lineage, list_datasets, resolve, versions

__all__ = ["FORMATS", "EXPORT_FORMATS", "DatasetVersion", "ImportResult", "Problem", "clean", "export",
           "import_file", "lineage", "list_datasets", "prompts_of", "read_prompts", "read_rows", "register_rows",
           "resolve", "split", "versions"]


def prompts_of(version: DatasetVersion, split: str = "train") -> list[list[dict]]:
    """Prompt message lists from a version of any kind (sft: the turns before the last assistant turn)."""
    return [prompt_messages(row) for row in version.load(split)]
