"""Adapter merging: LoRA adapters of several runs on one base, combined into one new adapter by PEFT's
`add_weighted_adapter` (`tunelab models merge-adapters RUN_A RUN_B --method ties --weights 0.7,0.3
--density 0.5 --name NAME`).

The result is recorded as a completed training run of method `merge` whose final/ holds the new adapter,
so it is `BASE+RUN_ID` like any other adapter: eval (with forgetting measured against the base through
the adapter switch), the Playground, campaigns, the leaderboard (method merge, data: the sources'),
`init_from` for further training and `tunelab models merge` into a whole model all work unchanged. The
merge runs in this process (seconds: no training), recorded as a job by `jobs.run_here`; NAME is kept in
the run's config as the name people call it by.

Methods (PEFT's `combination_type`; see peft/tuners/lora/model.py):
- linear: A = Σ √(wᵢ·sᵢ)·Aᵢ and B = Σ √(wᵢ·sᵢ)·Bᵢ (sᵢ the source's lora_alpha/r), so the new adapter
  has the sources' rank and scale 1; cheap, and only a rough sum of the sources' updates (cross terms).
- ties, dare_ties: the same on A and B after trimming each to `density` of its entries (by magnitude, or
  at random for DARE, seeded) and electing one sign per entry.
- svd: the weighted sum of the full updates Σ wᵢ·Bᵢ·Aᵢ·sᵢ, cut back to the largest source rank by SVD;
  the only one that accepts sources of different ranks.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from tunelab import db as dbmod
from tunelab import workspace
from tunelab.errors import UserError
from tunelab.workspace import Workspace

METHODS = ("linear", "ties", "dare_ties", "svd")
EQUAL_RANKS = ("linear", "ties", "dare_ties")  # PEFT adds A and B matrices entrywise: one rank
NEEDS_DENSITY = ("ties", "dare_ties")
MERGE_METHOD = "merge"  # the `method` of the run that records a merge
SEED = 0  # DARE drops entries at random; a fixed seed makes a merge repeatable


@dataclass(frozen=True)
class Source:
    run: str
    base_model: str
    base: Path      # the folder the adapter applies to
    adapter: Path   # its final/ folder
    rank: int
    dataset: str


def parse_weights(text: str | list) -> list[float]:
    """'0.7,0.3' (or a list) -> [0.7, 0.3]; a UserError naming --weights otherwise."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        weights = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise UserError(f"--weights {text!r}: give one number per adapter, comma-separated (e.g. 0.5,0.5)") from None
    if not all(math.isfinite(w) for w in weights):
        raise UserError(f"--weights {text!r}: every weight must be a finite number")
    return weights


def _source(db, ws: Workspace, run_id: str) -> Source:
    """A completed run whose result is a LoRA adapter, with what a merge needs to know of it."""
    from tunelab import models, runs
    run = runs.get(db, run_id)
    spec = models.ModelSpec(run.base_model, run_id).check(db, ws)  # completed, not a reward model, on disk
    base, adapter = spec.folders(db, ws)
    if adapter is None:
        raise UserError(f"runs: {run_id} is a {run.tuning} run; its result is a whole model, not a LoRA adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("target_parameters"):
        raise UserError(f"runs: {run_id}'s adapter ({adapter}) is not a LoRA adapter on modules "
                        f"(peft_type {config.get('peft_type')!r}); only those merge")
    return Source(run_id, run.base_model, base.resolve(), adapter, adapter_rank(adapter), run.dataset)


def adapter_rank(adapter: Path) -> int:
    """A LoRA adapter's largest rank (its `r`, or a larger one in `rank_pattern`), as PEFT sizes merges."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def check(db, ws: Workspace, run_ids: list[str], method: str, weights: list[float], name: str,
          density: float | None = None) -> list[Source]:
    """Refuse a merge PEFT cannot do, or one whose result could not be told apart, before anything is
    written; a UserError names the field. Returns the sources in order."""
    from tunelab import models
    if len(run_ids) < 2:
        raise UserError(f"runs: a merge needs at least two adapter runs, got {len(run_ids)}")
    if len(set(run_ids)) != len(run_ids):
        raise UserError(f"runs: {', '.join(run_ids)} names a run twice; give its weight once instead")
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if len(weights) != len(run_ids):
        raise UserError(f"--weights: {len(weights)} weights for {len(run_ids)} runs; give one per run, in order")
    if method in NEEDS_DENSITY:
        if density is None or not 0 < density <= 1:
            raise UserError(f"--density {density}: {method} keeps this fraction of each adapter's entries; give a "
                            "number in (0, 1], e.g. 0.5")
    elif density is not None:
        raise UserError(f"--density: only {' and '.join(NEEDS_DENSITY)} prune; {method} takes no density")
    workspace.check_name(name, "merged adapter")
    if name in {m.name for m in models.list_models(db)}:
        raise UserError(f"--name {name!r}: a registered model has that name; choose another")
    if db.execute("SELECT id FROM runs WHERE method = ? AND json_extract(config_json, '$.name') = ?",
                  [MERGE_METHOD, name]).fetchone():
        raise UserError(f"--name {name!r}: another merged adapter has that name; choose another")

    sources = [_source(db, ws, r) for r in run_ids]
    first = sources[0]
    for s in sources[1:]:
        if (s.base_model, s.base) != (first.base_model, first.base):
            raise UserError(f"runs: {first.run} adapts {first.base_model} ({first.base}) but {s.run} adapts "
                            f"{s.base_model} ({s.base}); merged adapters must share one base")
    if method in EQUAL_RANKS and len({s.rank for s in sources}) > 1:
        ranks = ", ".join(f"{s.run} r={s.rank}" for s in sources)
        raise UserError(f"runs: --method {method} adds the adapters' matrices, so they need one LoRA rank; "
                        f"these have {ranks}. Use --method svd, which merges any ranks")
    return sources


def merge_adapters(db, ws: Workspace, run_ids: list[str], method: str, weights: list[float], name: str,
                   density: float | None = None, progress: Callable[[float, str], None] | None = None) -> str:
    """Merge the runs' adapters into a new adapter, recorded as a completed `merge` run; returns its id."""
    from tunelab import cost, jobs, runs
    report = progress or (lambda f, m: None)
    sources = check(db, ws, run_ids, method, weights, name, density)
    first = sources[0]
    init = first.base.parent.name if first.base.is_relative_to(ws.runs_dir.resolve()) else None  # a full run's model
    rank = first.rank if method in EQUAL_RANKS else max(s.rank for s in sources)
    data = " + ".join(dict.fromkeys(s.dataset for s in sources))
    config = {"method": MERGE_METHOD, "name": name, "base_model": first.base_model, "init_from": init,
              "runs": list(run_ids), "combination_type": method, "weights": weights, "density": density,
              "seed": SEED, "dataset": data, "tuning": "lora", "lora": {"r": rank}}
    with dbmod.transaction(db):
        run_id = runs.record(db, ws, config, yaml.safe_dump(config, sort_keys=False), cost.device_kind())
    folder = Path(ws.runs_dir) / run_id
    jobs.run_here(db, "train", run_id, folder,
                  lambda: _write(sources, method, weights, density, folder / "final", report))
    return run_id


def _write(sources: list[Source], method: str, weights: list[float], density: float | None, final: Path,
           report: Callable[[float, str], None]) -> None:
    """Load the base with every source adapter, add the weighted one as 'default' (so that it saves at the
    folder's top, as a training run's adapter does) and write it with the first source's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(0.1, f"loading {sources[0].base_model}")
    model = AutoModelForCausalLM.from_pretrained(str(sources[0].base), dtype=torch.float32)
    names = [f"source_{i}" for i in range(len(sources))]
    report(0.4, "loading the adapters")
    peft_model = PeftModel.from_pretrained(model, str(sources[0].adapter), adapter_name=names[0])
    for n, s in zip(names[1:], sources[1:]):
        peft_model.load_adapter(str(s.adapter), adapter_name=n)
    report(0.6, f"merging ({method})")
    torch.manual_seed(SEED)
    peft_model.add_weighted_adapter(names, weights, "default", combination_type=method, density=density)
    report(0.8, "writing the adapter")
    partial = final.with_name(final.name + ".partial")
    peft_model.save_pretrained(str(partial), selected_adapters=["default"])
    AutoTokenizer.from_pretrained(str(sources[0].adapter)).save_pretrained(str(partial))
    partial.rename(final)  # the adapter appears whole or not at all
    report(1.0, "merged")
