"""The executors by name: one table, the one place a command turns ``--executor NAME`` and its settings into an
:class:`~study.sweeps.executors.Executor`. Another engine is one :class:`Executor` class and one
:func:`register_executor` entry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from study.sweeps.executors import Executor, InlineExecutor, LocalExecutor, RayExecutor, default_local_workers
from study.sweeps.slurm import SlurmExecutor
from study.sweeps.slurm_settings import SlurmSettings
from transfer.errors import UserError


@dataclass(frozen=True)
class ExecutorSettings:
    """What the commands say of where runs execute; each executor's factory reads its own part."""

    workers: int | None = None  # local: worker processes (default: one per GPU, else cores / threads)
    threads: int | None = None  # local, CPU: torch threads per worker
    address: str | None = None  # ray: cluster address (None: a local Ray)
    cpus_per_run: int = 1  # ray, without GPUs
    shared_fs: bool = True  # ray: tasks write run directories every node sees
    slurm: SlurmSettings | None = None  # slurm: the job arrays' settings
    together: int = 1  # local, inline: runs trained in one loop where they may share one (transfer.together)


def _local(s: ExecutorSettings) -> Executor:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    default_workers, default_threads = default_local_workers(gpus, os.cpu_count() or 1)
    return LocalExecutor(s.workers or default_workers, s.threads or default_threads, gpus, s.together)


def _slurm(s: ExecutorSettings) -> Executor:
    if s.slurm is None:
        raise UserError("--executor slurm needs its settings (--slurm-partition, --slurm-time, ...)")
    return SlurmExecutor(s.slurm)


EXECUTORS: dict[str, Callable[[ExecutorSettings], Executor]] = {
    "inline": lambda s: InlineExecutor(s.together),
    "local": _local,
    "ray": lambda s: RayExecutor(s.address, s.cpus_per_run, s.shared_fs),
    "slurm": _slurm,
}


def register_executor(name: str, factory: Callable[[ExecutorSettings], Executor], replace: bool = False) -> None:
    """Add an executor: ``factory(settings) -> Executor`` under ``name`` (``--executor name`` where a command
    offers it)."""
    if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
        raise UserError(f"an executor's name must be a non-empty word, got {name!r}")
    if not callable(factory):
        raise UserError(f"executor {name!r}: its factory must be callable (settings) -> Executor")
    if name in EXECUTORS and not replace:
        raise UserError(f"an executor named {name!r} is registered already; pass replace=True")
    EXECUTORS[name] = factory


def make_executor(name: str, **settings) -> Executor:
    """The executor ``name`` of :data:`EXECUTORS`, from the settings (:class:`ExecutorSettings`' fields)."""
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    return EXECUTORS[name](ExecutorSettings(**settings))
