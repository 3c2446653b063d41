"""Human preference collection: campaigns, generation, assignment and votes, quality, import and export.

A campaign is a set of prompts and two or more model specs (`NAME` or `NAME+RUN_ID`) (campaigns.py).
A `generate` job samples N answers per prompt and model, then pairs are built per prompt across
models; each pair wants K votes (generation.py). Gold pairs carry a known answer and are given to
every annotator once, to measure accuracy (campaigns.add_gold). Annotators claim one pair at a time
and vote on it (votes.py); agreement and per-annotator figures come from quality.py; votes leave as
battles or TRL preference rows (exporting.py), and Arena or AlpacaEval judgments come in as an
imported campaign (importing.py).

Callers use `from tunelab import feedback` and the names below.
"""
from tunelab.feedback.campaigns import (GOLD_MODEL, Campaign, CampaignConfig, add_gold, add_gold_file,
                                     create_campaign, get_campaign, list_campaigns, prompts)
from tunelab.feedback.exporting import (SOURCES, ExportPolicy, aggregate, arena_battles, battle_counts, battles,
                                        export)
from tunelab.feedback.generation import build_pairs, start_generation, store_responses, wait_generation
from tunelab.feedback.importing import SAMPLE_SOURCE, import_judgments
from tunelab.feedback.judges import (DEFAULT_TIE_BAND, TEMPLATE, judge_summary, judges_overview, make_spec,
                                     parse_spec, start_judge, wait_judge)
from tunelab.feedback.panel import judge_panel
from tunelab.feedback.quality import quality
from tunelab.feedback.sampling import model_pair_probabilities
from tunelab.feedback.triage import MIN_MARGIN, triage, untriage
from tunelab.feedback.votes import (CHOICES, SHOWN_CHOICES, STRENGTHS, Assignment, annotator_progress, cast_vote,
                                 next_pair, skip, undo_last, vote_and_next)

__all__ = ["CHOICES", "GOLD_MODEL", "SHOWN_CHOICES", "STRENGTHS", "Assignment", "Campaign", "CampaignConfig",
           "ExportPolicy", "add_gold", "add_gold_file", "aggregate", "annotator_progress", "arena_battles",
           "battle_counts", "battles", "build_pairs", "cast_vote", "create_campaign", "export", "get_campaign",
           "import_judgments", "list_campaigns", "next_pair", "prompts", "quality", "skip", "start_generation",
           "store_responses", "undo_last", "vote_and_next", "wait_generation",
           "DEFAULT_TIE_BAND", "TEMPLATE", "judge_summary", "judges_overview", "make_spec", "parse_spec",
           "start_judge", "wait_judge",
           "SOURCES", "SAMPLE_SOURCE", "MIN_MARGIN", "judge_panel", "triage", "untriage", "model_pair_probabilities"]
