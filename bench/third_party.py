"""Third-party data that benches read from `../shared/data` beside the repository.

Only benches read it; tests use the project's own fixtures in tests/data. A fresh clone has nothing beside it,
so a bench checks its input first and, if the file is missing, says which file and where it comes from and exits 2
instead of failing with a traceback halfway through.
"""
from __future__ import annotations

import sys
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {  # the first folder under SHARED_DATA: where its files come from
    "llamafactory": "the data/ folder of https://github.com/hiyouga/LLaMA-Factory",
    "fastchat": "https://github.com/lm-sys/FastChat (fastchat/llm_judge/data/mt_bench/question.jsonl, saved "
                "under this name)",
}


def require(path: Path) -> Path:
    """`path` if it is a file; otherwise print what is missing and how to get it, and exit 2."""
    if path.is_file():
        return path
    if path.is_relative_to(SHARED_DATA):
        folder = path.relative_to(SHARED_DATA).parts[0]
        how = (f"this bench reads third-party data from {SHARED_DATA}, which a fresh clone lacks; "
               f"download {path.name} from {SOURCES.get(folder, 'its upstream project')} into {path.parent}")
    else:
        how = "give an existing file"
    print(f"{path}: not found; {how}", file=sys.stderr)
    raise SystemExit(2)
