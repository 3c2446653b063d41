"""Cleaning steps. Each makes a new version whose report holds before/after counts and examples.

- exact dedup: rows whose canonical JSON is identical (keep the first);
- near dedup: MinHash over word 3-grams with LSH (datasketch); a row is dropped when its estimated
  Jaccard similarity to a kept row reaches the threshold;
- PII redaction: Presidio's pattern recognizers (email, phone, credit card with Luhn, IP, IBAN with
  checksum) replace each finding with <ENTITY_TYPE>; no spaCy model is downloaded;
- token-length filter with the chosen model's tokenizer and chat template.
"""
from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from functools import lru_cache

from tunelab.datasets import inspection, store
from tunelab.errors import UserError

EXAMPLES = 5            # removed/changed rows kept in a step's report
NUM_PERM = 128          # MinHash permutations: ~0.09 standard error on a Jaccard estimate
MAX_THRESHOLD = 0.98    # above this, LSH with NUM_PERM permutations cannot form two bands
SHINGLE = 3             # word n-grams for near dedup
PII_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE")
WORD = re.compile(r"\w+")
# Every entity above needs a digit, or an '@' for emails: text without either cannot hold one.
MAYBE_PII = re.compile(r"[\d@]")
# phonenumbers' matcher takes decimals such as "0.3571428571" for phone numbers; a real number never
# has a single dot between digits and nothing else.
DECIMAL = re.compile(r"^[(\-]*\d+\.\d+$")


def _preview(row: dict, limit: int = 300) -> str:
    text = inspection.row_text(row)
    return text if len(text) <= limit else text[:limit] + "…"


def _progress(progress):
    return progress or (lambda f, m: None)


def dedup_exact(rows: list[dict], progress=None) -> tuple[list[dict], dict]:
    seen: dict[str, int] = {}
    kept, removed = [], []
    for i, row in enumerate(rows):
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key in seen:
            removed.append({"row": i + 1, "duplicate_of": seen[key] + 1, "text": _preview(row)})
        else:
            seen[key] = i
            kept.append(row)
    _progress(progress)(1.0, f"{len(removed)} exact duplicates")
    return kept, {"before": len(rows), "after": len(kept), "removed": len(removed), "examples": removed[:EXAMPLES]}


def _shingles(text: str) -> list[bytes]:
    words = WORD.findall(text.lower())
    if len(words) < SHINGLE:
        return [" ".join(words).encode()]
    return list({" ".join(words[i:i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)})


def dedup_near(rows: list[dict], threshold: float = 0.85, progress=None) -> tuple[list[dict], dict]:
    from datasketch import MinHash, MinHashLSH
    if not 0.0 < threshold <= MAX_THRESHOLD:
        raise UserError(f"--threshold {threshold}: must be above 0 and at most {MAX_THRESHOLD} (e.g. 0.85)")
    report = _progress(progress)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    kept_hashes: dict[int, MinHash] = {}
    kept, removed = [], []
    step = max(1, len(rows) // 100)
    # generator() builds the permutations once and copies them; crc32 is a fast, stable 32-bit hash
    # (the default sha1 is several times slower, and 32 bits are all MinHash keeps).
    signatures = MinHash.generator((_shingles(inspection.row_text(r)) for r in rows), num_perm=NUM_PERM,
                                   hashfunc=zlib.crc32)
    for i, (row, m) in enumerate(zip(rows, signatures)):
        best, best_sim = None, 0.0
        for j in lsh.query(m):
            sim = m.jaccard(kept_hashes[j])
            if sim > best_sim:
                best, best_sim = j, sim
        if best is not None and best_sim >= threshold:
            removed.append({"row": i + 1, "similar_to": best + 1, "similarity": round(best_sim, 3),
                            "text": _preview(row), "kept_text": _preview(rows[best])})
        else:
            lsh.insert(i, m, check_duplication=False)
            kept_hashes[i] = m
            kept.append(row)
        if i % step == 0:
            report(i / len(rows), f"near dedup {i:,}/{len(rows):,}")
    report(1.0, f"{len(removed)} near duplicates")
    return kept, {"before": len(rows), "after": len(kept), "removed": len(removed), "threshold": threshold,
                  "examples": removed[:EXAMPLES]}


@lru_cache(maxsize=1)
def _pii_engines():
    """Presidio's analyzer with only pattern recognizers on a blank spaCy pipeline, and the anonymizer."""
    import spacy
    import tldextract.tldextract as tx
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          IpRecognizer, PhoneRecognizer)
    from presidio_anonymizer import AnonymizerEngine

    # The email recognizer checks domains with tldextract's module-level extractor, which would try to
    # download the public suffix list: use the snapshot bundled with the package, no cache, no network.
    tx.TLD_EXTRACTOR = tx.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class BlankSpacy(SpacyNlpEngine):
        """Tokenization only; pattern recognizers need no trained spaCy model."""

        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (EmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IpRecognizer(),
                       IbanRecognizer()):
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=BlankSpacy(), supported_languages=["en"])
    return analyzer, AnonymizerEngine()


def redact_text(text: str) -> tuple[str, Counter]:
    """`text` with each PII finding replaced by <ENTITY_TYPE>, and the count per entity type."""
    if not MAYBE_PII.search(text):
        return text, Counter()
    analyzer, anonymizer = _pii_engines()
    found = [r for r in analyzer.analyze(text, language="en", entities=list(PII_ENTITIES))
             if not (r.entity_type == "PHONE_NUMBER" and DECIMAL.match(text[r.start:r.end]))]
    if not found:
        return text, Counter()
    result = anonymizer.anonymize(text, found)
    return result.text, Counter(item.entity_type for item in result.items)


def redact_pii(rows: list[dict], progress=None) -> tuple[list[dict], dict]:
    report = _progress(progress)
    counts: Counter = Counter()
    out, examples, changed = [], [], 0
    step = max(1, len(rows) // 100)
    for i, row in enumerate(rows):
        new_row = dict(row)
        row_counts: Counter = Counter()
        for field in ("messages", "prompt", "chosen", "rejected", "completion"):
            if field in row:
                new_msgs = []
                for m in row[field]:
                    text, found = redact_text(m["content"])
                    row_counts += found
                    new_msgs.append({**m, "content": text})
                new_row[field] = new_msgs
        if row_counts:
            changed += 1
            counts += row_counts
            if len(examples) < EXAMPLES:
                examples.append({"row": i + 1, "before": _preview(row), "after": _preview(new_row),
                                 "entities": dict(row_counts)})
        out.append(new_row)
        if i % step == 0:
            report(i / len(rows), f"PII {i:,}/{len(rows):,}")
    report(1.0, f"{sum(counts.values())} PII findings")
    return out, {"before": len(rows), "after": len(out), "rows_changed": changed,
                 "entities": {e: counts.get(e, 0) for e in PII_ENTITIES}, "examples": examples}


def filter_tokens(rows: list[dict], tokenizer, max_tokens: int | None = None, min_tokens: int | None = None,
                  progress=None) -> tuple[list[dict], dict]:
    lengths = inspection.token_lengths(rows, tokenizer, progress)
    kept, removed = [], []
    for i, (row, n) in enumerate(zip(rows, lengths)):
        if (max_tokens is not None and n > max_tokens) or (min_tokens is not None and n < min_tokens):
            removed.append({"row": i + 1, "tokens": n, "text": _preview(row)})
        else:
            kept.append(row)
    return kept, {"before": len(rows), "after": len(kept), "removed": len(removed), "max_tokens": max_tokens,
                  "min_tokens": min_tokens, "examples": removed[:EXAMPLES]}


def _unsplit_rows(version: store.DatasetVersion) -> list[dict]:
    if list(version.splits) != ["train"]:
        raise UserError(f"dataset {version.ref} is already split ({', '.join(version.splits)}); clean the "
                        f"version before the split ({version.parent}) and split again")
    return version.load("train")


def clean(db, ws, ref: str, dedup: str | None = None, threshold: float = 0.85, redact: bool = False,
          max_tokens: int | None = None, min_tokens: int | None = None, model: str | None = None,
          progress=None) -> list[dict]:
    """Run the chosen steps in order (dedup, PII, token filter), each writing a new version.
    Returns one report per step, each with its version's ref."""
    if dedup not in (None, "exact", "near"):
        raise UserError(f"--dedup {dedup!r}: choose exact or near")
    if (max_tokens is not None or min_tokens is not None) and not model:
        raise UserError("--max-tokens/--min-tokens need --model: token lengths depend on the model's tokenizer")
    version = store.resolve(db, ws, ref)
    rows = _unsplit_rows(version)
    steps = []
    if dedup:
        steps.append(("dedup_exact", {}, dedup_exact))
        if dedup == "near":
            steps.append(("dedup_near", {"threshold": threshold}, lambda rs, p: dedup_near(rs, threshold, p)))
    if redact:
        steps.append(("redact_pii", {"entities": list(PII_ENTITIES)}, redact_pii))
    if max_tokens is not None or min_tokens is not None:
        tokenizer = inspection.load_tokenizer(db, ws, model)
        steps.append(("filter_tokens", {"model": model, "max_tokens": max_tokens, "min_tokens": min_tokens},
                      lambda rs, p: filter_tokens(rs, tokenizer, max_tokens, min_tokens, p)))
    if not steps:
        raise UserError("nothing to do: choose --dedup, --redact-pii or --max-tokens")
    reports = []
    report = _progress(progress)
    for k, (transform, params, run) in enumerate(steps):
        rows, step_report = run(rows, lambda f, m, k=k: report((k + f) / len(steps), m))
        if not rows:
            raise UserError(f"{transform} would leave no rows in {version.ref}; nothing written")
        version = store.write_version(db, ws, version.name, {"train": rows}, version.kind, transform, params,
                                      parent=version.ref, report=step_report)
        reports.append({"step": transform, "ref": version.ref, **step_report})
    return reports
