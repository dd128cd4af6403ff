"""What runs one sweep run, in a worker process of any executor (local process pool, Ray task).

Kept free of heavy imports at module level: a local worker sets its thread count and visible
GPU before torch is imported.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path


def execute_run(settings: dict, run_dir: str | Path, indices: list[int] | None = None) -> dict:
    """Fine-tune one run of a sweep into ``run_dir`` (continuing it if it was interrupted); with ``indices``,
    on exactly those training images (a retraining of the linear datamodeling score or of leave-one-out).

    Returns ``{"summary": dict | None, "error": str | None, "device": str}``: a finished run's
    summary, or the one-line reason it failed. A run that finished before returns its summary
    at once, after its recorded settings were compared with ``settings``.
    """
    return execute_together([{"settings": settings, "run_dir": str(run_dir), "indices": indices}])[0]


def execute_together(jobs: list[dict]) -> list[dict]:
    """:func:`execute_run` for every job ``{"settings", "run_dir"[, "indices"]}``, the runs that may share a training
    loop trained in one (:func:`transfer.together.finetune_together`); one result per job, in order. A failure is
    every job's result (their run directories keep what was done: the same call resumes them)."""
    import torch

    from transfer.device import resolve_device
    from transfer.errors import UserError
    from transfer.finetune import FinetuneConfig, finetune
    from transfer.together import finetune_together

    device = ""
    try:
        cfgs = [FinetuneConfig(**job["settings"]) for job in jobs]
        dev = resolve_device(cfgs[0].device)
        device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        if len(jobs) == 1:
            summaries = [finetune(cfgs[0], jobs[0]["run_dir"], resume=True, progress=False,
                                  indices=jobs[0].get("indices"))]  # fmt: skip
        else:
            summaries = finetune_together(cfgs, [job["run_dir"] for job in jobs], [job.get("indices") for job in jobs],
                                          resume=True, progress=False)  # fmt: skip
        return [{"summary": s, "error": None, "device": device} for s in summaries]
    except UserError as exc:
        error = str(exc)
    except OSError as exc:  # a full disk, a permission: said as the CLI says it, with the path
        from transfer.files import describe_os_error

        error = describe_os_error(exc)
    except Exception as exc:  # a bug or a resource failure: keep the last frame for the ledger
        where = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
    return [{"summary": None, "error": error, "device": device} for _ in jobs]


def _exit_with_parent(parent: int) -> None:
    """Kill this worker when its coordinator dies (kill -9 included), so no orphan keeps writing a run."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def local_worker(threads: int) -> None:
    """A local pool worker: one JSON job per line on stdin, one JSON answer per line on the protocol pipe.

    A job is ``{"key", "settings", "run_dir"[, "indices"]}``, or several trained together ``{"together": [job, ...]}``;
    the answer one line: ``{"key", "result"}``, or ``{"together": [answer, ...]}``. The process's own
    stdout is pointed at stderr so that nothing a library prints can corrupt the protocol.
    """
    import json
    import sys

    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    import torch

    torch.set_num_threads(threads)
    for line in sys.stdin:
        message = json.loads(line)
        jobs = message["together"] if "together" in message else [message]
        answers = [{"key": job["key"], "result": r} for job, r in zip(jobs, execute_together(jobs), strict=True)]
        # one line per message: the coordinator waits for a readable pipe, then reads one line
        proto.write(json.dumps(answers[0] if "together" not in message else {"together": answers}) + "\n")
        proto.flush()


def ray_run(settings: dict, run_dir: str | None, indices: list[int] | None = None) -> dict:
    """A Ray task: with ``run_dir`` (a shared file system) write there; without, return the run's files.

    In the second form the run is done in a temporary directory and its files (``config.json``,
    ``subset.json``, ``metrics.jsonl``, ``summary.json``, ``model.pt``) come back as bytes for the
    coordinator to write; an interrupted run then starts again instead of resuming.
    """
    if run_dir is not None:
        return execute_run(settings, run_dir, indices)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = execute_run(settings, Path(tmp) / "run", indices)
        files = {}
        if result["summary"] is not None:
            files = {p.name: p.read_bytes() for p in (Path(tmp) / "run").iterdir() if not p.name.startswith(".")}
        return {**result, "files": files}


if __name__ == "__main__":
    import sys

    local_worker(int(sys.argv[1]))
