"""Training speed-ups that TRL's own options do not give, each measured by bench/train_throughput.py.

1. Attention within each packed conversation (`packed_sdpa`). TRL's packing is padding-free: the collator
   hands the model one row holding all of a batch's conversations, with their boundaries (`cu_seq_lens_q`).
   Under transformers' SDPA that row gets a (tokens x tokens) block-diagonal mask, and the whole square is
   computed: at batch 4 x max_length 512 that was 38% of a SmolLM2-135M LoRA step on CPU. `packed_sdpa`
   calls SDPA once per conversation (causal, no mask) instead, which computes only the blocks on the
   diagonal, with the same result. Batches without boundaries (no packing, generation, padded eval) go to
   transformers' own SDPA with its mask, unchanged.
2. The LM head only on the labelled positions. TRL's fused LM head projects through the vocabulary only the
   positions that have a label when the device runs Triton; elsewhere it projects every position, because
   on compiled devices (XLA) a changing number of positions would recompile on every batch. Eager PyTorch
   on the CPU compiles nothing, so the prompt and padding positions are dropped there too: the loss and
   gradients are the same, and a step is about 14% faster at 77% labelled tokens (alpaca, assistant-only).
3. Online RL's rollouts from merged LoRA weights. GRPO and RLOO sample their answers with the training
   model's `generate`, where every all-linear LoRA layer adds two small matmuls per token: on CPU that
   generated about 9x slower than the same weights merged (core/generate.py). `generate_merged` merges the
   adapter for the length of each `generate` call and takes it out again, so the answers come from the
   same policy, and training sees the adapter as before. Only on float32 base weights: in bf16, fp16 or
   4-bit, merging and taking out would round the frozen weights a little further at every rollout.
"""
from __future__ import annotations

PACKED_SDPA = "packed_sdpa"


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                 cu_seq_lens_q=None, **kwargs):
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    one_packed_row = (cu_seq_lens_q is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
                      and getattr(module, "is_causal", True) and not kwargs.get("sliding_window")
                      and kwargs.get("position_bias") is None)
    if not one_packed_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    gqa = query.shape[1] != key.shape[1]
    dropout_p = dropout if module.training else 0.0
    parts = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout_p,
                                            is_causal=True, scale=scaling, enable_gqa=gqa)
             for a, b in zip(bounds, bounds[1:]) if b > a]
    # (batch, heads, tokens, head_dim) -> (batch, tokens, heads, head_dim), as transformers' attention returns it
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_packed_sdpa() -> None:
    """Make `packed_sdpa` an attention implementation transformers knows, with SDPA's mask for the fallback."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_SDPA, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def lm_head_on_labelled_positions_only() -> bool:
    """Let TRL's fused LM head skip unlabelled positions on the CPU too; False if this TRL has no such switch.

    `trl.trainer.utils._use_triton` is consulted there only for that choice (the kernels keep their own
    reference), so it is replaced in that module alone, and only the answer for CPU tensors changes.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "tunelab_cpu_compact", False):
        return True

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    compact.tunelab_cpu_compact = True
    trl_utils._use_triton = compact
    return True


def generate_merged(model) -> bool:
    """Make `model.generate` (a PEFT model's) run on merged weights: merge_adapter before, unmerge_adapter after,
    also when generation fails. False, and nothing changed, for a model without a LoRA adapter, and for base
    weights in bf16/fp16 or quantized (QLoRA): adding and taking out the adapter there rounds the frozen weights
    a little more at every rollout, so only float32 weights (the CPU's) come back as they were."""
    import torch
    if not hasattr(model, "merge_adapter"):
        return False
    if getattr(model.generate, "tunelab_merged", False):
        return True
    if any(p.dtype != torch.float32 for name, p in model.named_parameters() if "lora_" not in name):
        return False
    plain = model.generate

    def generate(*args, **kwargs):
        model.merge_adapter()
        try:
            return plain(*args, **kwargs)
        finally:
            model.unmerge_adapter()

    generate.tunelab_merged = True
    model.generate = generate
    return True
