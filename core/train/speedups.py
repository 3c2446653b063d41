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
3. Online RL's rollouts from a merged copy (`rollout_copy`). GRPO and RLOO sample their answers with the
   training model's `generate`, where every all-linear LoRA layer adds two small matmuls per token, in the
   training precision (float32 on a CPU). `rollout_copy` keeps a copy of the policy with the adapter merged
   in, in the precision models answer in (bf16 on a CPU with native bf16, as precision.inference_dtype
   says), refreshed from the live weights before every rollout. As with vLLM's bf16 rollouts in TRL, the
   answers are sampled from the policy rounded to that precision; the loss and its log-probabilities are
   the float32 model's.
4. Padded batches without the padding (`padding_free`). The reward model, DPO and online RL hand the model
   padded batches: a pair's chosen and rejected answers, or sampled answers, padded to the longest in the
   batch. Hooks on the model's body turn such a batch into one row of its real tokens with each sequence's
   bounds, so every layer works on real tokens only and attention stays within each sequence (packed_sdpa,
   or FlashAttention on a GPU); the hidden states go back to their padded places before the head, so TRL's
   trainers see the shapes they expect. Positions count from each sequence's first token, as generation
   counts them (rotary attention depends only on the distance between tokens, so left padding's shift
   changed nothing but rounding).
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
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    # Eager under a compiled block (core/train/compiling.py): its loop over a row's conversations differs per batch.
    AttentionInterface.register(PACKED_SDPA, torch.compiler.disable(_packed_sdpa))
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


def rollout_copy(model, dtype) -> bool:
    """Make `model.generate` (a PEFT LoRA model's, on the CPU) sample from a copy of the policy with the adapter
    merged in, in `dtype` (precision.inference_dtype: bf16 where the CPU computes it natively). Before each
    call the copy's merged layers are refreshed from the live base weights and adapter, so the answers come from
    the current policy and the training weights are never touched. False, and nothing changed, for a model
    without a LoRA adapter, with other trainable weights, with quantized weights, or not on the CPU."""
    import copy

    import torch
    from peft.tuners.lora import LoraLayer

    if not hasattr(model, "merge_and_unload") or getattr(model.generate, "tunelab_rollout_copy", False):
        return bool(getattr(model.generate, "tunelab_rollout_copy", False))
    params = list(model.named_parameters())
    if (any(p.device.type != "cpu" or not p.dtype.is_floating_point for _, p in params)
            or any(p.requires_grad and "lora_" not in name for name, p in params)):
        return False
    layers = {name: m for name, m in model.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    if not layers:
        return False
    # A new model of the base's class, not a deepcopy: TRL patches the live model's forward (its fused LM head)
    # with closures over the live modules, which a deepcopy would keep calling.
    base = model.get_base_model()
    rollout = type(base)(base.config).to(dtype).eval()
    rollout.generation_config = copy.deepcopy(base.generation_config)
    rollout.load_state_dict({k.replace(".base_layer.", "."): v for k, v in base.state_dict().items()
                             if "lora_" not in k})
    targets = {name: rollout.get_submodule(name) for name in layers}

    def generate(*args, **kwargs):
        with torch.no_grad():
            for name, layer in layers.items():
                merged = layer.base_layer.weight
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged = merged + layer.get_delta_weight(adapter)
                targets[name].weight.copy_(merged)
            return rollout.generate(*args, **kwargs)

    generate.tunelab_rollout_copy = True
    model.generate = generate
    return True


def padding_free(model, device_kind: str) -> str:
    """Run `model`'s transformer body on the real tokens of each padded batch only (section 4); the attention
    implementation it set. flash_attention_2 where a GPU has it installed, else packed_sdpa: both read the
    sequence bounds the hooks pass. A model without a separate body (`base_model`) is left as it was ("")."""
    from transformers.utils import is_flash_attn_2_available

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", inner)
    if body is inner:
        return ""
    attn = "flash_attention_2" if device_kind == "cuda" and is_flash_attn_2_available() else PACKED_SDPA
    if attn == PACKED_SDPA:
        register_packed_sdpa()
    inner.set_attn_implementation(attn)
    if not getattr(body, "tunelab_padding_free", False):
        body.register_forward_pre_hook(_unpad_inputs, with_kwargs=True)
        body.register_forward_hook(_repad_outputs, with_kwargs=True)
        body.tunelab_padding_free = True
    return attn


def _unpad_inputs(body, args, kwargs):
    """Forward pre-hook: a padded (batch, length) call becomes one row of the real tokens with their bounds."""
    import torch
    import torch.nn.functional as F

    body.tunelab_unpadded = None
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask")
    if (input_ids is None or mask is None or mask.dim() != 2 or input_ids.shape[0] < 2 or len(args) > 1
            or kwargs.get("inputs_embeds") is not None or kwargs.get("cache") is not None
            or kwargs.get("past_key_values") is not None or kwargs.get("output_hidden_states")
            or kwargs.get("output_attentions") or "cu_seq_lens_q" in kwargs):
        return None
    mask = mask.bool()
    # Only where each row's tokens are one run (left and/or right padding): a hole would change the distances.
    starts = (mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0].long()
    if bool(mask.all()) or bool((starts > 1).any()):
        return None
    where = mask.flatten().nonzero().squeeze(1)
    lengths = mask.sum(1)
    bounds = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    positions = kwargs.get("position_ids")
    positions = (mask.long().cumsum(1) - 1) if positions is None else positions.expand_as(mask)
    longest = int(lengths.max())
    kwargs = {**kwargs, "input_ids": input_ids.flatten()[where].unsqueeze(0), "attention_mask": None,
              "position_ids": positions.flatten()[where].unsqueeze(0), "use_cache": False,
              "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}
    body.tunelab_unpadded = (where, mask.shape)
    return (), kwargs


def _repad_outputs(body, args, kwargs, output):
    """Forward hook: the real tokens' hidden states go back to their padded places (zeros at the padding)."""
    unpadded, body.tunelab_unpadded = getattr(body, "tunelab_unpadded", None), None
    if unpadded is None:
        return None
    where, (rows, length) = unpadded
    hidden = output.last_hidden_state[0]
    output.last_hidden_state = hidden.new_zeros(rows * length, hidden.shape[-1]).index_copy(
        0, where, hidden).view(rows, length, -1)
    return output
