"""A list of fine-tunes run to completion on any executor, without a grid or a ledger: the retrainings of
the linear datamodeling score and of leave-one-out.

Each job is an ordinary run directory, so what makes a sweep resumable holds here too: the same call
after any kill keeps the finished runs (their settings checked), continues the interrupted ones from their
``state.pt`` and starts the rest. A worker that dies is retried up to ``max_attempts`` times; a run that
fails stops the whole call with its error once the others in flight have ended.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from study.sweeps.executors import Executor
from study.sweeps.grid import RunSpec
from transfer.errors import UserError


def run_jobs(jobs: list[tuple[RunSpec, Path]], executor: Executor, progress: bool = True, desc: str = "runs",
             max_attempts: int = 3) -> dict[str, dict]:  # fmt: skip
    """Run every ``(spec, run_dir)`` on ``executor``; return each run's summary by key, in the jobs' order.

    The executor is shut down at the end, whatever happens."""
    keys = [spec.key for spec, _ in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_jobs: job keys must be unique")
    pending = list(jobs)
    attempts: dict[str, int] = {}
    in_flight: dict[str, tuple[RunSpec, Path]] = {}
    done: dict[str, dict] = {}
    errors: list[str] = []
    bar = tqdm(total=len(jobs), desc=f"{desc} [{executor.description}]", unit="run", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    try:
        while pending or in_flight:
            while pending and len(in_flight) < executor.slots and not errors:
                spec, run_dir = pending.pop(0)
                executor.submit(spec, run_dir)
                in_flight[spec.key] = (spec, run_dir)
            if not in_flight:
                break
            for out in executor.wait(timeout=1.0):
                job = in_flight.pop(out.key)
                if out.summary is not None:
                    done[out.key] = out.summary
                    bar.update(1)
                elif out.lost and attempts.get(out.key, 1) < max_attempts:
                    attempts[out.key] = attempts.get(out.key, 1) + 1
                    pending.insert(0, job)  # its run directory resumes where the dead worker left it
                else:
                    errors.append(f"{out.key} ({job[1]}): {out.error}")
    finally:
        bar.close()
        executor.shutdown()
    if errors:
        raise UserError(f"{len(errors)} of {len(jobs)} {desc} failed; first: {errors[0]}. Fix the cause and run the "
                        "same command again: finished runs are kept")  # fmt: skip
    return {k: done[k] for k in keys}
