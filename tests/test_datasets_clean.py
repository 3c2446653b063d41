"""Cleaning, inspection, splits and export (incl. TRL's own data preparation on the exported files)."""
from __future__ import annotations


import pytest

from tunelab import datasets
from tunelab.datasets import cleaning, inspection
from tunelab.errors import UserError
from tests.conftest import REPO, TEST_DATA


def sft(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def register(db, ws, rows, name="d", kind="sft"):
    return datasets.register_rows(db, ws, name, rows, kind, "test", {})


def test_exact_and_near_dedup_make_versions_with_reports(workspace):
    db, ws = workspace
    base = "the router restarts every night because the firmware schedule is switched on by default in settings"
    rows = [sft("Why does it restart?", base), sft("Why does it restart?", base),  # exact copy
            sft("Why does it restart?", base + " too"),                            # near copy
            sft("How do I reset it?", "hold the reset pin for ten seconds until the light blinks amber")]
    register(db, ws, rows)
    reports = datasets.clean(db, ws, "d", dedup="near", threshold=0.8)
    assert [(r["step"], r["ref"], r["before"], r["after"]) for r in reports] == [
        ("dedup_exact", "d@2", 4, 3), ("dedup_near", "d@3", 3, 2)]
    assert reports[0]["examples"][0] == {"row": 2, "duplicate_of": 1, "text": inspection.row_text(rows[1])}
    near = reports[1]["examples"][0]
    assert near["row"] == 2 and near["similar_to"] == 1 and near["similarity"] >= 0.8
    v3 = datasets.resolve(db, ws, "d@3")
    assert v3.load() == [rows[0], rows[3]] and v3.parent == "d@2" and v3.params == {"threshold": 0.8}
    assert v3.report["removed"] == 1
    # A high threshold keeps the near copy.
    kept, report = cleaning.dedup_near([rows[0], rows[2], rows[3]], threshold=0.98)
    assert len(kept) == 3 and report["removed"] == 0
    with pytest.raises(UserError, match="at most 0.98"):
        cleaning.dedup_near(rows, threshold=0.99)


def test_pii_redaction_counts_each_entity_type(workspace):
    db, ws = workspace
    rows = [sft("Contact me at jane.doe@example.com or +1 415-555-0132.",
                "Card 4111 1111 1111 1111 was charged from 192.168.1.20; refund to DE89 3704 0044 0532 0130 00."),
            sft("My other mail is bob@example.org", "Noted."),
            sft("Solve x = 0.3571428571 and 4111 1111 1111 1112", "No PII here, and no valid card either.")]
    register(db, ws, rows)
    [report] = datasets.clean(db, ws, "d", redact=True)
    assert report["entities"] == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1,
                                  "IBAN_CODE": 1}
    assert report["rows_changed"] == 2
    out = datasets.resolve(db, ws, report["ref"]).load()
    assert out[0]["messages"][0]["content"] == "Contact me at <EMAIL_ADDRESS> or <PHONE_NUMBER>."
    assert out[0]["messages"][1]["content"] == ("Card <CREDIT_CARD> was charged from <IP_ADDRESS>; "
                                                "refund to <IBAN_CODE>.")
    assert out[2] == rows[2]


def test_token_length_filter_and_stats_use_the_models_tokenizer(tiny_model):
    db, ws, name = tiny_model
    rows = [sft("Hi", "Paris."), sft("Hi", "The capital of France is Paris. " * 30)]
    register(db, ws, rows)
    tok = inspection.load_tokenizer(db, ws, name)
    lengths = inspection.token_lengths(rows, tok)
    expected = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                for r in rows]
    assert lengths == expected and lengths[0] < 40 < lengths[1]
    stats = inspection.length_stats(lengths, max_length=40)
    assert stats["over_max_length"] == 1 and sum(b["rows"] for b in stats["bins"]) == 2
    with pytest.raises(UserError, match="need --model"):
        datasets.clean(db, ws, "d", max_tokens=40)
    [report] = datasets.clean(db, ws, "d", max_tokens=40, model=name)
    assert (report["before"], report["after"], report["examples"][0]["tokens"]) == (2, 1, lengths[1])
    assert datasets.resolve(db, ws, "d").load() == [rows[0]]


def test_templated_row_marks_only_assistant_tokens_as_trained(tiny_model):
    db, ws, name = tiny_model
    tok = inspection.load_tokenizer(db, ws, name)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                        {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "Capital?"},
                        {"role": "assistant", "content": "Paris"}]}
    pieces = inspection.render_tokens(tok, row)
    assert "".join(t for t, _ in pieces) == tok.apply_chat_template(row["messages"], tokenize=False)
    trained = "".join(t for t, on in pieces if on)
    assert trained == "Hi there<|im_end|>\nParis<|im_end|>\n"
    assert all(on for _, on in inspection.render_tokens(tok, row, assistant_only=False))
    prompt_only = inspection.render_tokens(tok, {"prompt": row["messages"][:2]})
    assert not any(on for _, on in prompt_only) and "".join(t for t, _ in prompt_only).endswith("assistant\n")


def test_turn_stats_search_and_prompts_of(workspace):
    db, ws = workspace
    rows = [sft("Reset the router?", "Hold the pin."),
            {"messages": [{"role": "system", "content": "S"}, *sft("Wi-Fi password?", "Wireless tab.")["messages"]]}]
    v = register(db, ws, rows)
    stats = inspection.turn_stats(rows)
    assert stats == {"roles": {"user": 2, "assistant": 2, "system": 1}, "turns": {2: 1, 3: 1}, "rows_with_system": 1}
    assert inspection.search(rows, "WIRELESS") == [1] and inspection.search(rows, "") == [0, 1]
    assert datasets.prompts_of(v) == [[rows[0]["messages"][0]], rows[1]["messages"][:2]]


def test_split_is_reproducible_by_seed(workspace):
    db, ws = workspace
    rows = [sft(f"q{i}", f"a{i}") for i in range(100)]
    register(db, ws, rows)
    a = datasets.split(db, ws, "d@1", val=0.1, test=0.05, seed=7)
    b = datasets.split(db, ws, "d@1", val=0.1, test=0.05, seed=7)
    c = datasets.split(db, ws, "d@1", val=0.1, test=0.05, seed=8)
    assert a.splits == {"train": 85, "validation": 10, "test": 5}
    assert a.content_hash == b.content_hash != c.content_hash
    assert set(a.files) == {"train", "validation", "test"}
    together = a.load("train") + a.load("validation") + a.load("test")
    assert sorted(r["messages"][0]["content"] for r in together) == sorted(f"q{i}" for i in range(100))
    with pytest.raises(UserError, match="already split"):
        datasets.clean(db, ws, a.ref, dedup="exact")
    with pytest.raises(UserError, match="too few"):
        datasets.split(db, ws, "d@1", val=0.001)


def test_export_round_trips_through_jsonl_parquet_and_save_to_disk(workspace, tmp_path):
    from datasets import load_from_disk
    db, ws = workspace
    v = datasets.import_file(db, ws, TEST_DATA / "dpo_demo.json", "dpo").version
    rows = v.load()
    [jsonl] = datasets.export(db, ws, "dpo", "trl", tmp_path / "dpo.jsonl")
    [parquet] = datasets.export(db, ws, "dpo", "parquet", tmp_path / "dpo.parquet")
    for path, name in [(jsonl, "back_jsonl"), (parquet, "back_parquet")]:
        back = datasets.import_file(db, ws, path, name)
        assert back.detected_format == "preference" and back.version.content_hash == v.content_hash
    [folder] = datasets.export(db, ws, "dpo", "hf", tmp_path / "hf")
    assert load_from_disk(str(folder))["train"][5] == rows[5]
    split = datasets.split(db, ws, "dpo", val=0.1, seed=0)
    paths = datasets.export(db, ws, split.ref, "jsonl", tmp_path / "splits")
    assert sorted(p.name for p in paths) == ["train.jsonl", "validation.jsonl"]
    with pytest.raises(UserError, match="give a folder"):
        datasets.export(db, ws, split.ref, "jsonl", tmp_path / "one.jsonl")


def test_trl_trainers_prepare_the_exported_files(tiny_model, tmp_path):
    """The exported JSONL loads with datasets.load_dataset and goes through SFT/DPO data preparation."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from tunelab import models
    db, ws, name = tiny_model
    sft_v = datasets.import_file(db, ws, REPO / "data" / "samples" / "acme_router_sft.jsonl", "acme").version
    dpo_v = datasets.import_file(db, ws, TEST_DATA / "dpo_demo.json", "dpo").version
    [sft_file] = datasets.export(db, ws, sft_v.ref, "trl", tmp_path / "sft.jsonl")
    [dpo_file] = datasets.export(db, ws, dpo_v.ref, "trl", tmp_path / "dpo.jsonl")
    path = models.model_path(db, ws, name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    common = dict(output_dir=str(tmp_path / "out"), max_steps=0, report_to="none", bf16=False, use_cpu=True,
                  max_length=128)

    sft_data = load_dataset("json", data_files=str(sft_file), split="train", cache_dir=str(tmp_path / "c"))
    assert sft_data.num_rows == 150
    trainer = SFTTrainer(model=model, args=SFTConfig(**common, assistant_only_loss=False), train_dataset=sft_data,
                         processing_class=tok)
    first = trainer.train_dataset[0]
    assert first["input_ids"] == tok.apply_chat_template(sft_v.load()[0]["messages"], tokenize=True,
                                                         return_dict=True)["input_ids"][:128]

    dpo_data = load_dataset("json", data_files=str(dpo_file), split="train[:20]", cache_dir=str(tmp_path / "c"))
    trainer = DPOTrainer(model=model, args=DPOConfig(**{**common, "max_length": None}), train_dataset=dpo_data,
                         processing_class=tok)
    assert trainer.train_dataset.num_rows == 20
    pair = dpo_v.load()[0]
    prepared = trainer.train_dataset[0]
    assert prepared["prompt_ids"] == tok.apply_chat_template(pair["prompt"], tokenize=True, return_dict=True,
                                                             add_generation_prompt=True)["input_ids"]
    assert tok.decode(prepared["chosen_ids"]).startswith(pair["chosen"][0]["content"][:50])
