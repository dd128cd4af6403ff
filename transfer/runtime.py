"""Where and how fast a command runs, never what it computes: the one home of the runtime settings.

Every command's settings dataclass extends :class:`Runtime` and names, in its ``RUNTIME`` class
variable, which of the six runtime settings it reads. The others are neither offered as flags
(:func:`cli.dataclass_args.add_dataclass_arguments` skips them) nor recorded, and a value other than
the default for one of them is refused, so no flag is accepted and then ignored.

A run records its settings in ``config.json`` without :data:`RESUMABLE` (the device, the data-loading
workers, the torch threads and the save interval may change when a run is resumed; where the data and
the models live may not, since another copy could be other data).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from transfer import validation as v
from transfer.errors import UserError

RUNTIME_FIELDS = ("device", "workers", "threads", "data_root", "cache_dir", "save_every")
RESUMABLE = ("device", "workers", "threads", "save_every")


@dataclass(kw_only=True)
class Runtime:
    """Device, data-loading workers, torch threads, data root, model cache and save interval."""

    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads while the command runs (default: torch's own choice)"}
    )
    data_root: str | None = field(
        default=None, metadata={"help": "where torchvision datasets live (default ~/.cache/robust-transfer/data)"}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "where downloaded source models live (default ~/.cache/robust-transfer/models)"}
    )
    save_every: float = field(
        default=60.0,
        metadata={
            "help": "seconds between saves of the training state (also saved at every evaluation); a killed run loses "
            "at most this much"
        },
    )

    RUNTIME: ClassVar[tuple[str, ...]] = RUNTIME_FIELDS  # the runtime settings this command reads

    def __post_init__(self):
        """Checks the runtime settings this command reads, and refuses a value for one it does not."""
        unknown = set(self.RUNTIME) - set(RUNTIME_FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__}.RUNTIME names unknown runtime settings: {sorted(unknown)}")
        for f in dataclasses.fields(Runtime):
            if f.name not in self.RUNTIME and getattr(self, f.name) != f.default:
                raise UserError(f"{v.flag(f.name)} does not apply to this command ({type(self).__name__})")
        v.device_name("device", self.device)
        v.integer("workers", self.workers, low=0)
        if self.threads is not None:
            v.integer("threads", self.threads, low=1)
        v.number("save_every", self.save_every, low=0)

    def runtime_settings(self) -> dict:
        """The runtime settings this command reads, by name."""
        return {name: getattr(self, name) for name in self.RUNTIME}

    def recorded(self) -> dict:
        """Every setting a run directory records and checks on resume: all but :data:`RESUMABLE` and the
        runtime settings this command does not read."""
        dropped = set(RESUMABLE) | (set(RUNTIME_FIELDS) - set(self.RUNTIME))
        return {k: val for k, val in dataclasses.asdict(self).items() if k not in dropped}


def offered_fields(cls) -> list[dataclasses.Field]:
    """A settings dataclass's fields as a user sees them: its own first, then the runtime settings it reads
    (``cls.RUNTIME``); the runtime settings it does not read are left out."""
    every = dataclasses.fields(cls)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        return list(every)
    own = [f for f in every if f.name not in RUNTIME_FIELDS]
    return own + [f for f in every if f.name in RUNTIME_FIELDS and f.name in cls.RUNTIME]


def runtime_help(name: str, **replace: str) -> dict:
    """The help metadata of runtime setting ``name``, for a subclass that changes its default."""
    text = next(f for f in dataclasses.fields(Runtime) if f.name == name).metadata["help"]
    return {"help": replace.get("help", text)}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the previous count restored after it (None: unchanged).

    The thread count is process-wide in torch; restoring it keeps a library caller's setting intact."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
