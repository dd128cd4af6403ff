"""A list of fine-tunes run to completion on any executor, without a grid or a ledger: the retrainings of
the linear datamodeling score and of leave-one-out.

Each job is an ordinary run directory, so what makes a sweep resumable holds here too: the same call
after any kill keeps the finished runs (their settings checked, in this process: no worker is started for a
run that is already done), continues the interrupted ones from their ``state.pt`` and starts the rest. A
worker that dies is retried up to ``max_attempts`` times; a run that fails stops the whole call with its error
once the others in flight have ended.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tqdm.auto import tqdm

from study.sweeps.executors import Executor
from study.sweeps.grid import RunSpec
from transfer.errors import UserError


def run_jobs(jobs: list[tuple[RunSpec, Path]], executor: Executor, progress: bool = True, desc: str = "runs",
             max_attempts: int = 3) -> dict[str, dict]:  # fmt: skip
    """Run every ``(spec, run_dir)`` on ``executor``; return each run's summary by key, in the jobs' order.

    An executor that trains several runs a loop (``executor.together > 1``) gets them in submissions of up to that
    many (fewer where that keeps every slot busy), each holding one slot. The executor is shut down at the end,
    whatever happens."""
    keys = [spec.key for spec, _ in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_jobs: job keys must be unique")
    done, errors = _finished_before(jobs)
    pending = [job for job in jobs if job[0].key not in done]
    attempts: dict[str, int] = {}
    in_flight: dict[str, tuple[RunSpec, Path]] = {}
    submissions: dict[str, int] = {}  # key -> the submission it went in; a submission holds one slot
    numbers = itertools.count()
    bar = tqdm(total=len(jobs), initial=len(done), desc=f"{desc} [{executor.description}]", unit="run",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    try:
        while pending or in_flight:
            while pending and (busy := len(set(submissions.values()))) < executor.slots and not errors:
                size = min(executor.together, -(-len(pending) // (executor.slots - busy)))
                chunk, pending = pending[:size], pending[size:]
                if len(chunk) == 1:
                    executor.submit(*chunk[0])
                else:
                    executor.submit_together(chunk)
                number = next(numbers)
                for spec, run_dir in chunk:
                    in_flight[spec.key] = (spec, run_dir)
                    submissions[spec.key] = number
            if not in_flight:
                break
            for out in executor.wait(timeout=1.0):
                job = in_flight.pop(out.key)
                submissions.pop(out.key)
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


def _finished_before(jobs: list[tuple[RunSpec, Path]]) -> tuple[dict[str, dict], list[str]]:
    """The summaries of the jobs whose run directory finished before, each read as a worker would (its recorded
    settings compared with the job's: a mismatch is an error), here: starting workers only to learn that
    everything is done costs seconds a run on a CPU."""
    from study.sweeps.worker import execute_run

    done, errors = {}, []
    for spec, run_dir in jobs:
        if not (Path(run_dir) / "summary.json").exists():
            continue
        result = execute_run(spec.settings, run_dir, None if spec.indices is None else list(spec.indices))
        if result["summary"] is not None:
            done[spec.key] = result["summary"]
        else:
            errors.append(f"{spec.key} ({run_dir}): {result['error']}")
    return done, errors
