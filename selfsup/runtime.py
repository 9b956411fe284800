"""Where a run computes: the device, the numeric precision, and the memory it used."""
from __future__ import annotations

import resource
from pathlib import Path

import torch

from selfsup.errors import TrainingError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The training device; under torchrun on CUDA, this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name} but no CUDA device is available; use train.device=cpu")
    return device


def prepare_device(device: torch.device) -> torch.device:
    """Make `device` this process's current one. On CUDA, cuDNN times its convolution algorithms for
    each input shape once and keeps the fastest: the shapes of a run repeat every step."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' takes bf16 on CUDA GPUs that support it and on CPUs with native bf16 (AMX / AVX512-BF16)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB
