"""What a Slurm job of a sweep asks for: one dataclass, checked once, shared by the commands that offer it."""

from __future__ import annotations

from dataclasses import dataclass

from transfer import validation as v

CLUSTERS = ("slurm", "local")  # submitit's: "local" runs the same job arrays as processes on this machine


@dataclass(frozen=True)
class SlurmSettings:
    """Partition, resources per run, time limit and array size of the job arrays; ``folder`` holds
    submitit's job files and logs."""

    folder: str
    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    mem_gb: float | None = None
    time_min: int = 240
    array: int = 64  # runs in flight at once: the job array's parallelism
    cluster: str = "slurm"

    def __post_init__(self):
        v.integer("slurm_gpus", self.gpus_per_run, low=0)
        v.integer("slurm_cpus", self.cpus_per_run, low=1)
        if self.mem_gb is not None:
            v.number("slurm_mem_gb", self.mem_gb, low=0, low_open=True)
        v.integer("slurm_time", self.time_min, low=1)
        v.integer("slurm_array", self.array, low=1)
        v.choice("slurm_cluster", self.cluster, CLUSTERS)
