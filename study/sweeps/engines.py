"""The executors by name: the one place a command turns ``--executor NAME`` and its settings into an
:class:`~study.sweeps.executors.Executor`."""

from __future__ import annotations

import os

from study.sweeps.executors import Executor, InlineExecutor, LocalExecutor, RayExecutor, default_local_workers
from study.sweeps.slurm import SlurmExecutor
from study.sweeps.slurm_settings import SlurmSettings
from transfer.errors import UserError


def make_executor(name: str, *, workers: int | None = None, threads: int | None = None, address: str | None = None,
                  cpus_per_run: int = 1, shared_fs: bool = True, slurm: SlurmSettings | None = None) -> Executor:  # fmt: skip
    """The executor ``name`` (one of :data:`EXECUTORS`): ``local`` defaults to one worker per GPU, else
    cores / threads workers (:func:`default_local_workers`); ``slurm`` needs ``slurm``."""
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(address, cpus_per_run, shared_fs)
    if name == "slurm":
        if slurm is None:
            raise UserError("--executor slurm needs its settings (--slurm-partition, --slurm-time, ...)")
        return SlurmExecutor(slurm)
    if name != "local":
        raise UserError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    default_workers, default_threads = default_local_workers(gpus, os.cpu_count() or 1)
    return LocalExecutor(workers or default_workers, threads or default_threads, gpus)


EXECUTORS = ("inline", "local", "ray", "slurm")
