"""A sweep: every run of a grid, recorded in a ledger, executed locally, on Ray or on Slurm, resumable at any moment.

A sweep directory holds ``grid.toml`` (the grid it was made from), ``ledger.sqlite`` (one row per
run: state, error, host, device, times, accuracies) and ``runs/<target>/<source>/b<blocks>/n<size>/s<seed>/``
(ordinary run directories). The coordinator holds the directory's lock for its whole life, so the
same command run again after any kill (the coordinator's or a worker's) continues: done runs are
never redone, interrupted ones continue from their ``state.pt``, and a run is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from study.sweeps.engines import EXECUTORS as ENGINES
from study.sweeps.engines import make_executor as executor_named
from study.sweeps.executors import MAX_WORKERS, Executor, check_ray_address
from study.sweeps.grid import Grid, check_runnable, read_grid
from study.sweeps.ledger import Ledger
from study.sweeps.slurm import check_slurm
from study.sweeps.slurm_settings import SlurmSettings
from transfer import validation as v
from transfer.errors import UserError
from transfer.files import OutputDir, atomic_write_text, name_patterns


def sweep_executors() -> list[str]:
    """The executors a sweep offers: every registered one but ``inline`` (a sweep is many runs)."""
    return [name for name in ENGINES if name != "inline"]


@dataclass
class SweepConfig:
    """Settings of ``robust-transfer sweep``."""

    grid: str = field(metadata={"help": "grid file (TOML): sources, targets, blocks, [seeds], [finetune]"})
    out: str = field(metadata={"help": "sweep directory (ledger and run directories); the same command resumes it"})
    executor: str = field(
        default="local", metadata={"help": "local (worker processes here), ray (a Ray cluster), slurm (job arrays) or an "
                                   "executor registered with study.sweeps.engines.register_executor"}
    )
    workers: int | None = field(
        default=None, metadata={"help": "local: worker processes (default: one per GPU, else cores / threads)"}
    )
    threads: int | None = field(default=None, metadata={"help": "local, CPU: torch threads per worker"})
    address: str | None = field(default=None, metadata={"help": "ray: cluster address (default: start a local Ray)"})
    ray_cpus_per_run: int = field(default=1, metadata={"help": "ray, without GPUs: CPUs per task"})
    ray_shared_fs: bool = field(
        default=True,
        metadata={"help": "ray: tasks write run directories under --out (a path every node sees); "
                  "--no-ray-shared-fs returns results as payloads the coordinator writes"},
    )  # fmt: skip
    slurm_partition: str | None = field(default=None, metadata={"help": "slurm: partition (default: the cluster's)"})
    slurm_gpus: int = field(default=1, metadata={"help": "slurm: GPUs per run"})
    slurm_cpus: int = field(default=8, metadata={"help": "slurm: CPUs per run (data loading, torch threads)"})
    slurm_mem_gb: float | None = field(default=None, metadata={"help": "slurm: memory per run, GB (default: the cluster's)"})
    slurm_time: int = field(
        default=240, metadata={"help": "slurm: time limit per run, minutes (a run cut off resumes from its last save)"}
    )
    slurm_array: int = field(default=64, metadata={"help": "slurm: runs in flight at once (the job arrays' parallelism)"})
    slurm_cluster: str = field(
        default="slurm",
        metadata={"help": "slurm: slurm (sbatch), or local (submitit runs the same job arrays as processes here: a "
                  "dry run of a cluster set-up)"},
    )  # fmt: skip
    retry_failed: bool = field(default=False, metadata={"help": "run failed runs again"})
    max_attempts: int = field(default=3, metadata={"help": "attempts per run when its worker dies"})

    def __post_init__(self):
        v.choice("executor", self.executor, sweep_executors())
        if self.workers is not None:
            v.integer("workers", self.workers, low=1, high=MAX_WORKERS)
        if self.threads is not None:
            v.integer("threads", self.threads, low=1)
        v.integer("ray_cpus_per_run", self.ray_cpus_per_run, low=1)
        v.integer("max_attempts", self.max_attempts, low=1)
        given = [f.name for f in fields(self) if f.name.startswith("slurm_") and getattr(self, f.name) != f.default]
        if given and self.executor != "slurm":
            raise UserError(f"{v.flag(given[0])} is for --executor slurm")
        self.slurm_settings()  # checked now, before anything runs

    def slurm_settings(self) -> SlurmSettings:
        """The job arrays' settings; submitit's files and the tasks' logs go to ``OUT/slurm``."""
        return SlurmSettings(str(Path(self.out) / "slurm"), self.slurm_partition, self.slurm_gpus, self.slurm_cpus,
                             self.slurm_mem_gb, self.slurm_time, self.slurm_array, self.slurm_cluster)  # fmt: skip


# what a sweep directory holds: its own files and the default outputs of the commands that read it
SWEEP_FILES = ("grid.toml", "ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "runs", "summary", "figures",
               "influence", "slurm")  # fmt: skip


class SweepDir:
    """Paths of a sweep directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.grid = self.root / "grid.toml"
        self.ledger = self.root / "ledger.sqlite"
        self.runs = self.root / "runs"

    def owned(self) -> OutputDir:
        """The directory held for a coordinator's life (a sweep made before markers existed is adopted by its ledger)."""
        return OutputDir(self.root, "sweep", name_patterns(*SWEEP_FILES), adopt=_has_our_ledger)

    def open_ledger(self) -> Ledger:
        """The ledger, read-only: for ``status``, ``summarize``, ``plot`` and studies."""
        if not self.root.is_dir():
            raise UserError(f"{self.root} is not a directory; give a sweep directory (robust-transfer sweep --out)")
        if not self.ledger.exists():
            raise UserError(f"{self.root} is not a sweep directory (no ledger.sqlite)")
        return Ledger(self.ledger, readonly=True)


def _has_our_ledger(root: Path) -> bool:
    """An unmarked directory is a sweep of an earlier version when it holds a ledger of ours (read-only check)."""
    if not (root / "ledger.sqlite").is_file():
        return False
    try:
        Ledger(root / "ledger.sqlite", readonly=True).db.close()
    except UserError:
        return False
    return True


def make_executor(cfg: SweepConfig) -> Executor:
    return executor_named(cfg.executor, workers=cfg.workers, threads=cfg.threads, address=cfg.address,
                          cpus_per_run=cfg.ray_cpus_per_run, shared_fs=cfg.ray_shared_fs,
                          slurm=cfg.slurm_settings())  # fmt: skip


def run_sweep(cfg: SweepConfig, progress: bool = True, executor: Executor | None = None) -> dict[str, int]:
    """Run every pending run of ``cfg.grid`` in ``cfg.out``; return the ledger's counts at the end.

    Safe to call again after any interruption: see the module docstring.
    """
    grid = read_grid(cfg.grid)
    check_runnable(grid, cfg.grid)  # every run's settings, before the ledger exists
    if cfg.executor == "ray" and executor is None:
        check_ray_address(cfg.address)
    if cfg.executor == "slurm" and executor is None:
        check_slurm(cfg.slurm_settings())
    sweep = SweepDir(cfg.out)
    with sweep.owned(), Ledger(sweep.ledger) as ledger:
        ledger.bind_grid(grid.digest, grid.name)
        if not sweep.grid.exists():
            atomic_write_text(sweep.grid, grid.text)
        ledger.add(grid.runs(), sweep.root)
        ledger.requeue_interrupted()
        if cfg.retry_failed:
            ledger.retry_failed()
        if ledger.counts()["pending"] == 0:
            return ledger.counts()
        executor = executor or make_executor(cfg)
        try:
            _drive(ledger, executor, cfg, progress)
        finally:
            executor.shutdown()
            # runs still marked running (a submission failure, Ctrl-C) go back to pending; they resume from state.pt
            ledger.requeue_interrupted()
        return ledger.counts()


def _drive(ledger: Ledger, executor: Executor, cfg: SweepConfig, progress: bool) -> None:
    """Keep every slot busy until no run is pending; record each outcome as it arrives."""
    counts = ledger.counts()
    bar = tqdm(total=sum(counts.values()), initial=counts["done"] + counts["failed"], disable=not progress,
               desc=f"sweep [{executor.description}]", unit="run", dynamic_ncols=True)  # fmt: skip
    in_flight: set[str] = set()

    def show():
        c = ledger.counts()
        bar.set_postfix_str(f"done {c['done']}, running {len(in_flight)}, failed {c['failed']}, left {c['pending']}")

    show()
    while True:
        claimed = ledger.claim(executor.slots - len(in_flight))
        for spec, run_dir in claimed:
            executor.submit(spec, run_dir)
            in_flight.add(spec.key)
        if claimed:
            show()
        if not in_flight:
            break
        for out in executor.wait(timeout=1.0):
            in_flight.discard(out.key)
            if out.summary is not None:
                ledger.finish(out.key, out.summary, out.device, out.worker)
                bar.update(1)
            elif out.lost:
                if ledger.lost(out.key, out.error, cfg.max_attempts) == "failed":
                    bar.update(1)
            else:
                ledger.fail(out.key, out.error, out.device, out.worker)
                bar.update(1)
            show()
    bar.close()


def sweep_status(out: Path | str) -> dict:
    """Counts per state, and the errors of failed runs (first five); reads the ledger without writing it."""
    with SweepDir(out).open_ledger() as ledger:
        failed = ledger.rows("failed")
        return {**ledger.counts(), "failed_runs": [(r["key"], r["error"]) for r in failed[:5]]}


def failure_message(out: Path | str, counts: dict[str, int]) -> str | None:
    """One line for a sweep that ended with failed runs (None when none failed): how many, the first error."""
    if not counts.get("failed"):
        return None
    total = sum(counts[k] for k in ("done", "running", "failed", "pending"))
    first = sweep_status(out)["failed_runs"][:1]
    example = f"; first: {first[0][0]}: {first[0][1]}" if first else ""
    return (f"{counts['failed']} of {total} runs failed{example}. See robust-transfer sweep status {out}; "
            "fix the cause and rerun with --retry-failed")  # fmt: skip


def grid_of(out: Path | str) -> Grid:
    """The grid a sweep directory was made from."""
    sweep = SweepDir(out)
    if not sweep.grid.exists():
        raise UserError(f"{sweep.root} is not a sweep directory (no grid.toml)")
    return read_grid(sweep.grid)
