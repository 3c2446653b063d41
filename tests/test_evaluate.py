"""Eval metrics against hand-computed values, baselines' prompts, loss against transformers' own loss,
reward-model scoring (full and PEFT), forgetting with an adapter, and a background eval run via the CLI."""
import json
import math

import pytest

from tunelab import evaluate
from tunelab.errors import UserError
from tests.conftest import QA, make_dataset, run_cli


def test_text_metrics_match_hand_computed_values():
    pred, ref = ["the cat sat on the mat"], ["the cat sat on a mat"]
    # BLEU: n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty).
    assert evaluate.bleu(pred, ref) == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    # ROUGE-L: the longest common subsequence "the cat sat on mat" is 5 of 6 words on both sides.
    assert evaluate.rouge_l(pred, ref) == pytest.approx(100 * 5 / 6)
    assert evaluate.exact_match(["  Paris.\n", "paris", "Rome"], ["paris.", "Paris.", "Rome"]) == pytest.approx(200 / 3)
    assert evaluate.chrf(["identical words"], ["identical words"]) == pytest.approx(100)
    assert evaluate.chrf(["xyz"], ["abc"]) == 0
    assert evaluate.length_words(["one two three", "four"]) == 2
    m = evaluate.text_metrics(pred + ["Paris"], ref + ["paris"])
    assert m["exact_match"] == 50 and set(m) == {"exact_match", "rouge_l", "bleu", "chrf", "length_words"}


def test_baseline_prompts_prompting_and_rag():
    pool = [([{"role": "user", "content": q}], a) for q, a in QA]
    query = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Germany?"}],
             [{"role": "user", "content": "Where do bees keep their honey?"}]]
    other = [{"role": "user", "content": "What is the capital of Italy?"}]
    shots = evaluate.baseline_prompts("prompting", query + [other], pool, k=3, system_prompt="Copy the style.",
                                      seed=1)
    assert shots[0][0] == {"role": "system", "content": "Copy the style.\n\nBe brief."}
    assert shots[1][0] == {"role": "system", "content": "Copy the style."}
    for msgs, q in zip(shots, query + [other]):
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * 3 + ["user"]
        assert msgs[-1] == q[-1]
        assert q[-1]["content"] not in [m["content"] for m in msgs[1:-1]]  # a row never sees itself
    # Prompting shows the same fixed examples to every question that is not itself one of them.
    assert shots[1][1:-1] == shots[2][1:-1]
    assert {m["content"] for m in shots[1][1:-1:2]} <= {q for q, _ in QA}

    rag = evaluate.baseline_prompts("rag", query, pool, k=2, system_prompt="", seed=0)
    # Germany's own row is excluded; the nearest other row is France's; it sits next to the question.
    assert rag[0][0] == {"role": "system", "content": "Be brief."}
    assert rag[0][-3]["content"] == "What is the capital of France?"
    assert "What is the capital of Germany?" not in [m["content"] for m in rag[0][:-1]]
    assert rag[1][-3]["content"] == "What do bees make?"
    with pytest.raises(UserError, match="needs train rows"):
        evaluate.baseline_prompts("rag", query, [(p, None) for p, _ in pool], 2, "")


def test_answer_loss_equals_transformers_loss(tiny_model_dir):
    import torch
    from tunelab import generate
    model, tok = generate.load(tiny_model_dir)
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    answer = "The capital of France is Paris."
    ours = evaluate.answer_loss(model, tok, [prompt], [answer])
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    whole = tok.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    ids = tok(whole, add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, :len(tok(head, add_special_tokens=False)["input_ids"])] = -100
    with torch.no_grad():
        theirs = model(input_ids=ids, labels=labels).loss.item()
    assert ours == pytest.approx(theirs, rel=1e-5)
    # Two rows in one padded batch give the token-weighted mean of the single-row losses.
    short = ("Hi", "Hello, how are you today?")
    both = evaluate.answer_loss(model, tok, [prompt, [{"role": "user", "content": short[0]}]], [answer, short[1]])
    alone = evaluate.answer_loss(model, tok, [[{"role": "user", "content": short[0]}]], [short[1]])
    assert min(ours, alone) <= both <= max(ours, alone)
    ppl = evaluate.text_perplexity(model, tok, ["The capital of France is Paris."])
    ids = tok("The capital of France is Paris.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert ppl == pytest.approx(math.exp(model(input_ids=ids, labels=ids).loss.item()), rel=1e-5)


@pytest.mark.slow
def test_answers_and_loss_in_one_pass_match_separate_scoring_and_generation(bundled_model_dir):
    """The shared pass (prompt + reference once, answers generated from the cropped cache) gives the answers a
    fresh generate gives and the loss of a scoring-only pass, with rows of mixed lengths in one batch, a row
    with no reference, and a row over max_length (scored on its own with the prompt cut on the left)."""
    from tunelab import generate
    model, tok = generate.load(bundled_model_dir)  # a trained model: its answers depend on every prompt token
    model = model.float()  # exact only in float32: in bf16, another padding may flip a greedy token
    prompts = [[{"role": "user", "content": q}] for q in
               ("Hi", "What is the capital of France? Answer in one word, please, and nothing else at all.",
                "Name a colour.", "Count to three " * 12)]
    references = ["Hello there.", "Paris.", None, "One two three " * 6]
    settings = generate.SamplingSettings(max_new_tokens=8, temperature=0.0)
    answers, loss = evaluate.answers_and_loss(model, tok, prompts, references, settings, batch_size=3, max_length=60)
    assert answers == generate.generate(model, tok, prompts, settings, batch_size=1)
    scored = [i for i, r in enumerate(references) if r is not None]
    per_row = [evaluate.answer_loss(model, tok, [prompts[i]], [references[i]], max_length=60) for i in scored]
    rows = [evaluate._prompt_and_answer_ids(tok, prompts[i], references[i]) for i in scored]
    assert len(rows[-1][0]) + len(rows[-1][1]) > 60  # the long row really is scored alone
    counts = [min(len(tail), 59) for _, tail in rows]
    assert loss == pytest.approx(sum(l * n for l, n in zip(per_row, counts)) / sum(counts), rel=1e-4)
    assert loss == pytest.approx(evaluate.answer_loss(model, tok, [prompts[i] for i in scored],
                                                      [references[i] for i in scored], batch_size=2,
                                                      max_length=60), rel=1e-5)


def _adapter(tiny_model_dir, folder):
    """A LoRA adapter with non-zero weights, so it changes the model's outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(folder)


def _reward_models(tiny_model_dir, runs_dir):
    """A full sequence-classification model in runs/rm-full/final and a PEFT one in runs/rm-lora/final."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    torch.manual_seed(0)
    full = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    full.config.pad_token_id = full.config.eos_token_id
    full.save_pretrained(runs_dir / "rm-full" / "final")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(runs_dir / "rm-full" / "final")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    lora = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(runs_dir / "rm-lora" / "final")
    return full, lora


def test_reward_scores_full_and_peft_models(tiny_model, tiny_model_dir):
    import torch
    from transformers import AutoTokenizer
    db, ws, _ = tiny_model
    full, lora = _reward_models(tiny_model_dir, ws.runs_dir)
    prompts = [[{"role": "user", "content": "What is two plus two?"}], [{"role": "user", "content": "Hello"}]]
    answers = ["Four.", "Hello, how are you today?"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for name, reference in (("rm-full", full), ("rm-lora", lora)):
        model, rtok = evaluate.load_reward_model(ws.runs_dir / name / "final", db, ws)
        got = evaluate.reward_scores(model, rtok, prompts, answers, batch_size=2)
        reference.eval()
        for prompt, answer, score in zip(prompts, answers, got):
            text = tok.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
            with torch.no_grad():
                want = reference(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
            assert score == pytest.approx(want, abs=1e-4), name
    with pytest.raises(UserError, match="neither a model"):
        evaluate.load_reward_model(ws.runs_dir, db, ws)


def test_run_eval_base_baselines_and_adapter(tiny_model, tiny_model_dir, tmp_path):
    db, ws, name = tiny_model
    version = make_dataset(db, ws, tmp_path)
    ref = tmp_path / "general.jsonl"
    ref.write_text("\n".join(json.dumps({"text": t}) for t in ["Hello, how are you today?", "1 2 3 4 5 6 7 8 9 0",
                                                               "The capital of France is Paris."]))
    _adapter(tiny_model_dir, ws.runs_dir / "r1" / "final")
    _reward_models(tiny_model_dir, ws.runs_dir)
    common = dict(model=name, dataset="qa", reference=str(ref), max_new_tokens=8)
    base = evaluate.run_eval(db, ws, evaluate.EvalConfig(**common, reward="rm-full"),
                             outputs=tmp_path / "out.jsonl")
    assert base["dataset"] == version.ref and base["split"] == "validation" and base["rows"] == 2
    assert base["perplexity"] == pytest.approx(math.exp(base["loss"]))
    assert base["forgetting"] == 0 and base["reference"] == "general.jsonl"
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and base["reward"] == pytest.approx(sum(x["reward"] for x in lines) / 2)
    answers = [x["answer"] for x in lines]
    refs = [x["reference"] for x in lines]
    assert base["rouge_l"] == pytest.approx(evaluate.rouge_l(answers, refs))
    assert base["length_words"] == pytest.approx(evaluate.length_words(answers))

    rag = evaluate.run_eval(db, ws, evaluate.EvalConfig(**common, baseline="rag", k=2))
    assert rag["forgetting"] == 0 and rag["loss"] != pytest.approx(base["loss"])

    tuned = evaluate.run_eval(db, ws, evaluate.EvalConfig(**common, adapter="r1"))
    # The adapter changes the weights: its reference perplexity moves, against the base's own.
    assert tuned["base_reference_perplexity"] == pytest.approx(base["reference_perplexity"], rel=1e-5)
    assert tuned["forgetting"] == pytest.approx(
        100 * (tuned["reference_perplexity"] / base["reference_perplexity"] - 1))
    assert tuned["forgetting"] != pytest.approx(0, abs=1e-3)
    assert evaluate.EvalConfig(**common, adapter="r1", baseline="rag").label == f"{name}+r1 [rag]"
    with pytest.raises(UserError, match="baseline 'few-shot'"):
        evaluate.EvalConfig(**common, baseline="few-shot")


@pytest.mark.process
@pytest.mark.timeout(300)
def test_cli_eval_runs_in_the_background_and_records_results(tiny_model, tmp_path):
    db, ws, name = tiny_model
    make_dataset(db, ws, tmp_path)
    done = run_cli("eval", name, "--dataset", "qa", "--baseline", "prompting", "--k", "2", "--limit", "2",
                   "--max-new-tokens", "4", "--wait", "--json", env_home=ws.home)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    row = evaluate.get(db, doc["id"])
    assert row["status"] == doc["status"] == "completed" and row["progress"] == 1
    assert row["pid"] and row["started_at"] and row["finished_at"] >= row["started_at"]  # its own process
    assert row["label"] == doc["label"] == f"{name} [prompting]"
    assert doc["metrics"] == row["metrics"] and row["metrics"]["rows"] == 2 and row["metrics"]["dataset"] == "qa@2"
    assert "perplexity" in row["metrics"] and row["config"]["k"] == 2
    assert (evaluate.evals_dir(ws) / str(doc["id"]) / "outputs.jsonl").exists()
    assert "100.0% done" in (evaluate.evals_dir(ws) / str(doc["id"]) / "job.log").read_text()
    assert [r["id"] for r in evaluate.list_evals(db, dataset="qa")] == [doc["id"]]

    bad = run_cli("eval", name, "--dataset", "nope", env_home=ws.home)
    assert bad.returncode == 2 and "nope" in bad.stderr
