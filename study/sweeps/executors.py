"""Executors: where a sweep's runs execute. One small interface, one class per engine.

An executor takes a run (``submit``) and reports finished ones (``wait``); the coordinator owns
the ledger and decides what to submit. Another engine (Dask, say) is one more class with these
three methods and one entry in :data:`study.sweeps.engines.EXECUTORS` (:func:`study.sweeps.engines.register_executor`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready
from pathlib import Path

from study.sweeps.grid import RunSpec
from transfer.errors import UserError
from transfer.files import atomic_write_bytes


@dataclass
class Outcome:
    """What became of one submitted run."""

    key: str
    summary: dict | None  # set when the run finished
    error: str | None  # set when it failed (or its worker died)
    lost: bool = False  # the worker died: the run itself may be fine, and is retried
    device: str = ""
    worker: str = ""


class Executor(ABC):
    """Runs sweep runs somewhere; ``slots`` of them at once.

    An executor whose ``together`` is above 1 also takes up to that many runs in one submission
    (:meth:`submit_together`), trained in one loop where they may share one (:mod:`transfer.together`); the
    submission holds one slot and reports one outcome per run.
    """

    slots: int
    description: str
    together: int = 1

    @abstractmethod
    def submit(self, spec: RunSpec, run_dir: Path) -> None:
        """Start ``spec`` into ``run_dir``; at most ``slots`` runs are in flight."""

    def submit_together(self, jobs: list[tuple[RunSpec, Path]]) -> None:
        """Start the runs ``jobs`` in one submission (``len(jobs) <= together``)."""
        raise NotImplementedError(f"{type(self).__name__} trains one run per submission")

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """The runs that finished (or were lost) within ``timeout`` seconds; possibly none."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop every worker; runs in flight are abandoned (the ledger requeues them next time)."""


def job_message(spec: RunSpec, run_dir: Path) -> dict:
    """A run as a worker takes it (:func:`study.sweeps.worker.execute_together`):
    ``{"key", "settings", "run_dir"[, "indices"]}``."""
    job = {"key": spec.key, "settings": spec.settings, "run_dir": str(run_dir)}
    if spec.indices is not None:
        job["indices"] = list(spec.indices)
    return job


MAX_WORKERS = 1024  # worker processes of a local executor: far above any one machine's cores or GPUs


def default_local_workers(cuda_devices: int, cores: int) -> tuple[int, int]:
    """``(workers, threads per worker)``: one worker per visible GPU, else workers x threads = cores."""
    if cuda_devices:
        return cuda_devices, max(1, cores // cuda_devices)
    threads = 1 if cores <= 4 else 4
    return max(1, cores // threads), threads


class LocalExecutor(Executor):
    """A pool of worker processes on this machine, each importing torch once and running runs in turn.

    Workers are plain ``python -m study.sweeps.worker`` processes that speak JSON lines over pipes (no
    re-import of the caller's main module, as multiprocessing's spawn would do). A worker that dies
    (killed, out of memory) is replaced and its run reported ``lost``. Workers exit by themselves
    when the coordinator dies.
    """

    def __init__(self, workers: int, threads: int, gpus: int = 0, together: int = 1):
        if not (1 <= workers <= MAX_WORKERS) or threads < 1:
            raise UserError(f"--workers must be in [1, {MAX_WORKERS}] and --threads >= 1, got {workers} and {threads}")
        self.slots, self.threads, self._gpus, self.together = workers, threads, gpus, together
        self._workers: list[dict] = []  # started as runs need them: never more workers than runs in flight
        where = f"{gpus} GPU(s), one worker each" if gpus else f"CPU, {workers} worker(s) x {threads} thread(s)"
        self.description = f"local: {where}" + (f", up to {together} runs a loop" if together > 1 else "")

    def _start(self, slot: int) -> dict:
        env = dict(os.environ)
        if self._gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self._gpus)
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.sweeps.worker", str(self.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
        )  # fmt: skip
        return {"proc": proc, "jobs": [], "slot": slot}

    def submit(self, spec: RunSpec, run_dir: Path) -> None:
        self._send([(spec, run_dir)])

    def submit_together(self, jobs: list[tuple[RunSpec, Path]]) -> None:
        self._send(jobs)

    def _send(self, jobs: list[tuple[RunSpec, Path]]) -> None:
        """One line to an idle worker: a job ``{"key", "settings", "run_dir"[, "indices"]}``, or several as
        ``{"together": [job, ...]}``."""
        idle = next((w for w in self._workers if not w["jobs"]), None)
        if idle is None and len(self._workers) < self.slots:
            idle = self._start(len(self._workers))
            self._workers.append(idle)
        if idle is None:
            raise RuntimeError("submit called with every worker busy")
        if idle["proc"].poll() is not None:  # died while idle
            idle = self._workers[self._workers.index(idle)] = self._start(idle["slot"])
        idle["jobs"] = [spec.key for spec, _ in jobs]
        lines = [job_message(spec, run_dir) for spec, run_dir in jobs]
        try:
            idle["proc"].stdin.write(json.dumps(lines[0] if len(lines) == 1 else {"together": lines}) + "\n")
            idle["proc"].stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker died just now: wait() reports the run lost

    def wait(self, timeout: float) -> list[Outcome]:
        busy = {w["proc"].stdout: w for w in self._workers if w["jobs"]}
        if not busy:
            time.sleep(min(timeout, 0.05))
            return []
        outcomes = []
        for ready in wait_ready(list(busy), timeout):
            w = busy[ready]
            name = f"local-{w['slot']}"
            line = w["proc"].stdout.readline()
            if line:  # one line per submission: one answer, or a submission's answers as {"together": [...]}
                answer = json.loads(line)
                for a in answer.get("together", [answer]):
                    result = a["result"]
                    outcomes.append(
                        Outcome(a["key"], result["summary"], result["error"], device=result["device"], worker=name)
                    )
                w["jobs"] = []
            else:  # end of file: the worker died, with every run it had not answered
                code = w["proc"].wait()
                outcomes += [Outcome(key, None, f"worker {name} died (exit code {code})", lost=True, worker=name)
                             for key in w["jobs"]]  # fmt: skip
                self._workers[self._workers.index(w)] = self._start(w["slot"])
        return outcomes

    def shutdown(self) -> None:
        for w in self._workers:
            try:
                w["proc"].stdin.close()  # an idle worker ends at end of input
            except OSError:
                pass
        for w in self._workers:
            try:
                w["proc"].wait(timeout=2 if not w["jobs"] else 0.01)
            except subprocess.TimeoutExpired:
                w["proc"].kill()
                w["proc"].wait()
            w["proc"].stdout.close()


class InlineExecutor(Executor):
    """Runs in this process, one at a time, when ``wait`` is called: no worker to start (small jobs, tests,
    a debugger). Uses this process's torch threads and device."""

    slots = 1

    def __init__(self, together: int = 1):
        self._jobs: list[tuple[RunSpec, Path]] = []
        self.together = together
        self.description = "inline: this process" + (f", up to {together} runs a loop" if together > 1 else "")

    def submit(self, spec: RunSpec, run_dir: Path) -> None:
        self.submit_together([(spec, run_dir)])

    def submit_together(self, jobs: list[tuple[RunSpec, Path]]) -> None:
        if self._jobs:
            raise RuntimeError("submit called with the inline executor busy")
        self._jobs = list(jobs)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._jobs:
            return []
        from study.sweeps.worker import execute_together

        jobs, self._jobs = self._jobs, []
        results = execute_together([job_message(spec, run_dir) for spec, run_dir in jobs])
        return [Outcome(spec.key, r["summary"], r["error"], device=r["device"], worker="inline")
                for (spec, _), r in zip(jobs, results, strict=True)]  # fmt: skip

    def shutdown(self) -> None:
        self._jobs = []


RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Refuse, within ``timeout`` seconds, a Ray address nothing answers at (``ray.init`` would retry for minutes).

    ``None``, ``auto`` and ``local`` are left to Ray; ``HOST:PORT`` and ``ray://HOST:PORT`` are
    tried with one TCP connection.
    """
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT, ray://HOST:PORT, auto or local; got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UserError(
            f"no Ray cluster answers at {address} ({reason} within {timeout:g} s); start it (ray start --head) "
            "and check --address, or leave --address out to start a local Ray"
        ) from None


class RayExecutor(Executor):
    """Runs as Ray tasks on an existing cluster (``address``) or a local Ray instance (``address=None``).

    One GPU per task where the cluster has GPUs, else ``cpus_per_run`` CPUs. With ``shared_fs`` the
    tasks write run directories on a path every node sees; without, they return the run's files
    and the coordinator writes them.
    """

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, shared_fs: bool = True,
                 num_cpus: int | None = None):  # fmt: skip
        try:
            import ray
        except ImportError:
            raise UserError('--executor ray needs Ray: pip install "robust-transfer[ray]"') from None
        from study.sweeps.worker import ray_run

        self._ray = ray
        if not ray.is_initialized():
            check_ray_address(address)
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)  # fmt: skip
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": cpus_per_run}
        self.slots = gpus or max(1, int(resources.get("CPU", 1)) // cpus_per_run)
        self._task = ray.remote(max_retries=0, **options)(ray_run)
        self._shared = shared_fs
        self._refs: dict = {}
        self.description = (
            f"ray ({address or 'local instance'}): {self.slots} slot(s), "
            + ("1 GPU per run" if gpus else f"{cpus_per_run} CPU(s) per run")
            + ("" if shared_fs else ", results returned as payloads")
        )

    def submit(self, spec: RunSpec, run_dir: Path) -> None:
        indices = None if spec.indices is None else list(spec.indices)
        ref = self._task.remote(spec.settings, str(run_dir) if self._shared else None, indices)
        self._refs[ref] = (spec.key, run_dir)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._refs:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        outcomes = []
        for ref in ready:
            key, run_dir = self._refs.pop(ref)
            try:
                result = self._ray.get(ref)
            except self._ray.exceptions.RayError as exc:  # the task's worker or node died
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                outcomes.append(Outcome(key, None, f"ray task lost: {first}", lost=True, worker="ray"))
                continue
            for name, data in result.get("files", {}).items():
                atomic_write_bytes(Path(run_dir) / name, data)
            outcomes.append(Outcome(key, result["summary"], result["error"], device=result["device"], worker="ray"))
        return outcomes

    def shutdown(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()

