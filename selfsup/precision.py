"""Training precision: fp32, or autocast to bf16 (CPU and GPU) or fp16 (with a gradient scaler,
which multiplies the loss so small fp16 gradients do not flush to zero, and skips steps whose
scaled gradients overflow)."""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, precision: str):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    return torch.autocast(device_type, dtype=_DTYPES.get(precision, torch.bfloat16), enabled=precision in _DTYPES)


def grad_scaler(device_type: str, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")
