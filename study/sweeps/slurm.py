"""Runs of a sweep as Slurm job arrays, through submitit (the well-kept library for submitting Python
functions to Slurm): one array task per run, each calling the same :func:`study.sweeps.worker.execute_run`
as the local and Ray workers, writing its run directory under the sweep (a file system every node sees).

The coordinator stays on the login node and owns the ledger, as with the other executors: runs it
submits between two polls go out as one job array (``--slurm-array`` in flight at most, the array's
parallelism), finished tasks are recorded as they end, and a task that ends without a result (killed,
out of time, preempted, node failure) is reported lost and resubmitted: its run directory continues from
its last ``state.pt``. Stopping the coordinator (Ctrl-C) cancels its tasks in flight; after ``kill -9``
cancel them by hand (``scancel --name robust-transfer``) before running the sweep again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from study.sweeps.executors import Executor, Outcome
from study.sweeps.grid import RunSpec
from study.sweeps.slurm_settings import SlurmSettings
from transfer.errors import UserError

JOB_NAME = "robust-transfer"


def check_slurm(settings: SlurmSettings) -> None:
    """Refuse, before anything is written, a Slurm sweep that cannot submit from here."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError('--executor slurm needs submitit: pip install "robust-transfer[slurm]"') from None
    if settings.cluster == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise UserError(f"--executor slurm: no {' or '.join(missing)} on this machine's PATH; run the sweep on a "
                            "Slurm login node (--slurm-cluster local runs the same job arrays as processes here)")  # fmt: skip


class SlurmExecutor(Executor):
    """Job arrays on Slurm (``cluster="slurm"``), or the same arrays as local processes (``"local"``)."""

    def __init__(self, settings: SlurmSettings):
        check_slurm(settings)
        import submitit

        self.settings = settings
        self._ex = submitit.AutoExecutor(folder=settings.folder, cluster=settings.cluster)
        params = {"name": JOB_NAME, "timeout_min": settings.time_min, "cpus_per_task": settings.cpus_per_run,
                  "gpus_per_node": settings.gpus_per_run, "nodes": 1, "tasks_per_node": 1}  # fmt: skip
        if settings.mem_gb is not None:
            params["mem_gb"] = settings.mem_gb
        if settings.cluster == "slurm":
            params["slurm_array_parallelism"] = settings.array
            if settings.partition:
                params["slurm_partition"] = settings.partition
        self._ex.update_parameters(**params)
        self.slots = settings.array
        self._buffer: list[tuple[RunSpec, Path]] = []
        self._jobs: dict = {}  # submitit Job -> run key
        where = f"partition {settings.partition}" if settings.partition else "the default partition"
        self.description = (f"slurm ({where}): arrays of up to {settings.array}, {settings.gpus_per_run} GPU(s), "
                            f"{settings.cpus_per_run} CPU(s), {settings.time_min} min per run"
                            if settings.cluster == "slurm" else
                            f"slurm job arrays run locally (submitit's local executor): {settings.array} at once")  # fmt: skip

    def submit(self, spec: RunSpec, run_dir: Path) -> None:
        self._buffer.append((spec, run_dir))  # sent as one array at the next wait

    def _flush(self) -> None:
        if not self._buffer:
            return
        from study.sweeps.worker import execute_run

        batch, self._buffer = self._buffer, []
        try:
            jobs = self._ex.map_array(execute_run, [s.settings for s, _ in batch], [str(d) for _, d in batch],
                                      [None if s.indices is None else list(s.indices) for s, _ in batch])  # fmt: skip
        except Exception as exc:  # submitit's FailedJobError from sbatch's exit code, an OSError, ...: one line
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            said = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
            raise UserError(f"--executor slurm: submitting a job array of {len(batch)} run(s) failed "
                            f"({type(exc).__name__}: {said[:300]}); check the --slurm-* settings against the "
                            f"cluster (partition, time, GPUs), then run the same command again; submitit's files are "
                            f"in {self.settings.folder}") from None  # fmt: skip
        for job, (spec, _) in zip(jobs, batch, strict=True):
            self._jobs[job] = spec.key

    def wait(self, timeout: float) -> list[Outcome]:
        self._flush()
        if not self._jobs:
            time.sleep(min(timeout, 0.05))
            return []
        deadline = time.monotonic() + timeout
        while True:
            done = [job for job in self._jobs if job.done()]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        outcomes = []
        for job in done:
            key, worker = self._jobs.pop(job), f"slurm-{job.job_id}"
            try:
                result = job.result()
            except Exception as exc:  # submitit's FailedJobError / UncompletedJobError: the task died without a result
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                outcomes.append(Outcome(key, None, f"slurm task {job.job_id} ended without a result: {first}",
                                        lost=True, worker=worker))  # fmt: skip
                continue
            outcomes.append(Outcome(key, result["summary"], result["error"], device=result["device"], worker=worker))
        return outcomes

    def shutdown(self) -> None:
        for job in list(self._jobs):
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - a task that ended meanwhile cannot be cancelled; nothing to do
                pass
        self._jobs.clear()
        self._buffer.clear()
