"""How much memory a device has free, and whether an exception means it ran out.

The engines size their chunks from a budget and refuse up front, saying how much they would need,
when even the smallest piece of work cannot fit: better than the kernel's out-of-memory killer
ending the process with no message.
"""
from __future__ import annotations

import torch


def available_bytes(device) -> int:
    """Free memory on ``device``: the CUDA allocator's free bytes, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator's failure (a RuntimeError on the host)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                              or "DefaultCPUAllocator" in text)


def format_bytes(n: int) -> str:
    """Bytes for people: "3.2 GiB", "640 MiB", "1,000 B"."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{round(n / 2**20)} MiB" if n >= 2**20 else f"{n:,} B"
