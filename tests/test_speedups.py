"""The training speed-ups give the same numbers as the paths they replace, and do take effect."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from tunelab.train import speedups

LENGTHS = [7, 12, 5]  # three conversations packed into one padding-free row


def _model(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def _packed_row() -> dict:
    """What TRL's padding-free collator hands the model: one row, positions restarting per conversation."""
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (1, sum(LENGTHS)))
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": ids, "position_ids": position_ids, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": max(LENGTHS), "max_length_k": max(LENGTHS)}


def test_packed_sdpa_matches_masked_sdpa_and_each_conversation_alone():
    speedups.register_packed_sdpa()
    model = _model()
    row = _packed_row()
    with torch.no_grad():
        # use_cache=False as in training (TRL sets it): with a cache transformers does not look for packing
        masked = model(**row, use_cache=False).logits
        model.set_attn_implementation(speedups.PACKED_SDPA)
        packed = model(**row, use_cache=False).logits
        start = 0
        for n in LENGTHS:  # no conversation sees another one
            alone = model(input_ids=row["input_ids"][:, start:start + n]).logits
            torch.testing.assert_close(packed[:, start:start + n], alone, atol=1e-5, rtol=1e-4)
            start += n
    torch.testing.assert_close(packed, masked, atol=1e-5, rtol=1e-4)


def test_packed_sdpa_keeps_the_padding_mask_without_packing():
    speedups.register_packed_sdpa()
    model = _model(speedups.PACKED_SDPA)
    ids = torch.randint(0, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as in batched generation
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, 4:]).logits
    torch.testing.assert_close(batched[1:, 4:], alone, atol=1e-5, rtol=1e-4)


def _loss_grads_flops(model, row, labels) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    model.zero_grad()
    with FlopCounterMode(display=False) as counter:
        loss = model(**row, labels=labels, fused_lm_head=True).loss
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], counter.get_total_flops()


def test_lm_head_on_labelled_positions_same_loss_less_work(monkeypatch):
    # TRL as shipped (a run set up earlier in this process leaves tunelab's patch on); undone after the test.
    from trl.kernels.chunked_logprob import _use_triton as shipped
    monkeypatch.setattr(trl_utils, "_use_triton", shipped)
    model = _model().train()
    add_fused_lm_head(model)
    row = _packed_row()
    labels = row["input_ids"].clone()
    labels[:, :15] = -100  # the prompts: no loss there

    every_position = _loss_grads_flops(model, row, labels)
    assert speedups.lm_head_on_labelled_positions_only()
    assert trl_utils._use_triton(torch.device("cpu"))
    labelled_only = _loss_grads_flops(model, row, labels)

    torch.testing.assert_close(labelled_only[0], every_position[0])
    for a, b in zip(labelled_only[1], every_position[1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert labelled_only[2] < every_position[2]


@pytest.mark.parametrize("packing,expected", [(True, speedups.PACKED_SDPA), (False, "sdpa")])
def test_auto_attention_on_cpu(packing, expected):
    from tunelab.train import sft
    cfg = sft.Config(base_model="tiny", dataset="d", packing=packing)
    assert sft.attention(cfg, {"kind": "cpu"}) == expected
    cfg.attn_implementation = "eager"
    assert sft.attention(cfg, {"kind": "cpu"}) == "eager"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rollout_copy_samples_from_the_current_merged_policy_and_never_touches_the_training_weights(dtype):
    """Online RL's rollouts: the answers the merged policy gives in the rollout precision, after a training step
    too (the copy is refreshed from the live adapter), with the training model's weights and outputs as they
    were; a model it cannot copy keeps its own generate."""
    import copy
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    add_fused_lm_head(model.get_base_model())  # as GRPOTrainer does: the live model's forward is patched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 64, (3, 5))
    kwargs = dict(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert speedups.rollout_copy(model, dtype) is True
    live_calls = []
    model.get_base_model().model.register_forward_pre_hook(lambda m, a: live_calls.append(1))

    def merged_answers():
        merged = LlamaForCausalLM(base.config)
        merged.load_state_dict(copy.deepcopy(model).merge_and_unload().state_dict())
        return merged.to(dtype).generate(**kwargs)

    def rollout():
        live_calls.clear()
        answers = model.generate(**kwargs)
        assert live_calls == []  # every rollout token came from the copy
        return answers

    assert torch.equal(rollout(), merged_answers())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():  # a training step moves the adapter: the next rollout follows it
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p))
    assert torch.equal(rollout(), merged_answers())
    assert not any(getattr(m, "merged", False) for m in model.modules())

    assert speedups.rollout_copy(LlamaForCausalLM(base.config), dtype) is False  # no adapter
    with_head = get_peft_model(LlamaForCausalLM(base.config), LoraConfig(r=4, target_modules="all-linear",
                                                                         modules_to_save=["lm_head"]))
    plain_generate = with_head.generate
    assert speedups.rollout_copy(with_head, dtype) is False  # a trained head the copy would not follow
    assert with_head.generate == plain_generate


@pytest.mark.parametrize("head", ["causal_lm", "reward"])
def test_padding_free_gives_the_padded_batchs_outputs_and_gradients_on_real_tokens_only(head):
    """DPO, reward models and online RL hand over padded batches (left- and right-padded rows): with the hooks
    the body sees one row of the real tokens, and the outputs at real tokens, the reward head's pooled score
    and every LoRA gradient are those of the padded batch. Generation (a KV cache) and a row with a hole in
    its mask are left to the model as they are."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    def model():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=1)
        bare = LlamaForCausalLM(config) if head == "causal_lm" else LlamaForSequenceClassification(config)
        return get_peft_model(bare, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False,
                                               task_type="CAUSAL_LM" if head == "causal_lm" else "SEQ_CLS"))

    padded, unpadded = model(), model()
    assert speedups.padding_free(unpadded, "cpu") == speedups.PACKED_SDPA
    torch.manual_seed(1)
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[0, 11:] = 0  # right padding (a shorter answer of a pair)
    mask[1, :5] = 0  # left padding (a prompt) ...
    mask[1, 13:] = 0  # ... and right padding (an answer that stopped early), as GRPO's batches have
    ids = torch.randint(1, 300, (4, 16)).masked_fill(mask == 0, 0)
    widths = []
    unpadded.get_base_model().model.layers[0].register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[:2]))
    out_padded, out_unpadded = padded(input_ids=ids, attention_mask=mask).logits, \
        unpadded(input_ids=ids, attention_mask=mask).logits
    assert widths == [(1, int(mask.sum()))]
    real = mask.bool()
    if head == "causal_lm":
        assert torch.allclose(out_padded[real], out_unpadded[real], atol=1e-5)
        out_padded, out_unpadded = out_padded[real], out_unpadded[real]
    else:
        assert torch.allclose(out_padded, out_unpadded, atol=1e-5)
    (out_padded ** 2).sum().backward()
    (out_unpadded ** 2).sum().backward()
    grads = {n: p.grad for n, p in padded.named_parameters() if p.requires_grad}
    assert grads and all((grads[n] - p.grad).norm() <= 1e-5 * grads[n].norm()
                         for n, p in unpadded.named_parameters() if p.requires_grad)

    widths.clear()
    holed = mask.clone()
    holed[2, 7] = 0
    with torch.no_grad():
        unpadded(input_ids=ids, attention_mask=holed)
        if head == "causal_lm":
            unpadded.generate(input_ids=ids[1:2, :13], attention_mask=mask[1:2, :13], max_new_tokens=2,
                              do_sample=False, pad_token_id=0)
    assert widths[0] == (4, 16) and all(w[0] == 1 for w in widths[1:])
