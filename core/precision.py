"""Which floating-point type a process computes in: the mixed precision a run trains with, and the dtype a
model is loaded in to answer (evals, the Playground, campaigns). Light on purpose: it imports torch only inside
its functions and nothing of transformers, so generate.load can ask without loading the training stack."""
from __future__ import annotations

from tunelab.errors import UserError


def mixed_precision(capability: tuple[int, int] | None) -> str | None:
    """'bf16', 'fp16' or None: the autocast dtype for a CUDA device of this compute capability (None: CPU).

    Native bf16 starts with Ampere (8.0). torch.cuda.is_bf16_supported() also says yes on a T4 (7.5) or a
    V100 (7.0), which emulate it slowly and have fast fp16 tensor cores instead. On CPU neither: bf16 autocast
    was about 25x slower there for training."""
    if capability is None:
        return None
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


def half_dtype():
    """The torch dtype this process's CUDA device computes fast in: bf16 or fp16, as mixed_precision says."""
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision(torch.cuda.get_device_capability(0))]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), where oneDNN runs bf16 matmuls fast."""
    import torch
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


INFERENCE_DTYPE_ENV = "TUNELAB_INFERENCE_DTYPE"
INFERENCE_DTYPES = ("float32", "bfloat16", "float16")


def inference_dtype():
    """The dtype to load a model in for answering and scoring: half precision where the hardware computes it
    natively (a CUDA device as mixed_precision says; a CPU with AVX-512 BF16 or AMX, where SmolLM2-135M answered
    2.1-2.6x faster than in float32 with the held-out loss within 0.4% and ROUGE-L within a point on the
    demo's evals), else float32. TUNELAB_INFERENCE_DTYPE=float32 (or bfloat16, float16) overrides it, for
    figures that must match float32 ones exactly."""
    import os

    import torch
    chosen = os.environ.get(INFERENCE_DTYPE_ENV)
    if chosen:
        if chosen not in INFERENCE_DTYPES:
            raise UserError(f"{INFERENCE_DTYPE_ENV}={chosen!r}: choose one of {', '.join(INFERENCE_DTYPES)}")
        return getattr(torch, chosen)
    if torch.cuda.is_available():
        return half_dtype()
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
