"""How much memory a dense matrix may take here: the guard every dense curvature path asks first.

Physical memory, the address-space limit and the cgroup limit on the CPU; free GPU memory on CUDA.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

from interp.errors import InterpError


def available_bytes() -> int:
    """Memory this process may still use: the least of physical memory available now (Linux
    ``MemAvailable``; total memory elsewhere), the address-space limit (``RLIMIT_AS``) less what the
    process has mapped, and the cgroup's ``memory.max`` less its ``memory.current``."""
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        free = min(free, soft - _mapped_bytes())
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(free, 0)


def _mapped_bytes() -> int:
    """The process's virtual size (``VmSize``), which ``RLIMIT_AS`` caps."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def device_free_bytes(device: torch.device | str | None) -> int:
    """Bytes free where a matrix on ``device`` would live: GPU memory for CUDA, else physical memory."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_bytes()


DENSE_ALTERNATIVE = ("use the matrix-free path (interp.hessian_vector_product with interp.ConjugateGradientInverse, or "
                     "--method cg) or fewer parameters (--params fc)")
GGN_ALTERNATIVE = ("use a method that needs no dense matrix: --method ekfac or kfac (Kronecker factors) or arnoldi "
                   "(GGN products), or fewer parameters")


def check_fits(need: float, what: str, instead: str, max_bytes: int | None = None,
               device: torch.device | str | None = None) -> None:  # fmt: skip
    """Refuse ``need`` bytes (``what``, in words) that will not fit on ``device``, saying what to do ``instead``."""
    limit = max_bytes if max_bytes is not None else device_free_bytes(device)
    if need > limit:
        where = "GPU memory" if device is not None and torch.device(device).type == "cuda" else "memory"
        raise InterpError(
            f"{what} needs about {need / 2**30:.1f} GiB with its working copies, more than the {limit / 2**30:.1f} GiB "
            f"of {where} available; {instead}"
        )


def check_dense_fits(
    p: int,
    copies: float = 3.0,
    max_bytes: int | None = None,
    device: torch.device | str | None = None,
    what: str | None = None,
    instead: str = DENSE_ALTERNATIVE,
) -> None:
    """Refuse a dense ``P x P`` float64 matrix (and ``copies`` working copies) that will not fit on ``device``;
    ``what`` names it (default: a dense Hessian) and ``instead`` says what to do."""
    check_fits(copies * p * p * 8, what or f"a dense {p} x {p} float64 Hessian", instead, max_bytes, device)
