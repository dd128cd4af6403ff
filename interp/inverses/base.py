"""Inverses of curvature matrices: the protocol every method follows, the registry that names them, the cut-off rule.

Every method is an :class:`InverseOperator` with ``apply(b) = (H + damping I)^+ b`` and ``info()`` (JSON-ready
facts: method, rank kept, cut-off, spectrum dropped, residuals), so that :func:`interp.influence_matrix` serves all
of them. A method is one operator class and one :class:`InverseMethod` entry, registered by the module that defines
it (:mod:`interp.inverses.dense`, ``cg``, ``exact``, ``kronecker``, ``arnoldi``); this module imports none of them.

An entry names the curvature it is built from (:class:`Curvature`: a dense matrix, products ``v -> H v``, or the
model itself), whether the cut-off applies and its default, and its own options as a dataclass (each field with its
default and help text). :func:`build_inverse` passes a method exactly the settings it reads, and refuses any other.

The cut-off ``rcond`` is relative to the largest eigenvalue. Named choices (:func:`resolve_rcond`):
``exact`` = ``P * eps(float64)``, the default of ``scipy.linalg.pinv`` (``atol + rtol * max`` with
``rtol = max(M, N) * eps``) and of ``numpy.linalg.matrix_rank``; ``numpy.linalg.pinv``'s own default is the
smaller ``1e-15`` (nothing but round-off is dropped either way; the API's default); ``paper`` = ``0.05``, what the
paper's code used (``scipy.linalg.pinv2(H, rcond=5e-2)``: singular values below 5% of the largest dropped).
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interp.curvature.params import select_params
from interp.errors import InterpError

PAPER_RCOND = 0.05
NAMED_RCOND = {
    "paper": "0.05 x the largest singular value, as the paper's code (scipy.linalg.pinv2(H, rcond=5e-2))",
    "exact": "P x float64 eps x the largest, the default of scipy.linalg.pinv (numpy.linalg.pinv uses 1e-15)",
}


def default_rcond(p: int) -> float:
    return p * float(np.finfo(np.float64).eps)


def resolve_rcond(rcond: float | str | None, p: int) -> float:
    """A cut-off as a number: ``None`` or ``"exact"`` -> ``P * eps``; ``"paper"`` -> 0.05; numbers checked."""
    if rcond is None or rcond == "exact":
        return default_rcond(p)
    if rcond == "paper":
        return PAPER_RCOND
    if isinstance(rcond, str):
        raise InterpError(f"rcond must be a number in [0, 1), 'paper' or 'exact', got {rcond!r}")
    if not (np.isfinite(rcond) and 0 <= rcond < 1):
        raise InterpError(f"rcond must be a finite number in [0, 1), got {rcond}")
    return float(rcond)


def check_damping(damping: float) -> None:
    if not (np.isfinite(damping) and damping >= 0):
        raise InterpError(f"damping must be a finite number >= 0, got {damping}")


class InverseOperator(ABC):
    """``(H + damping I)^+`` as an operator on vectors ``(P,)`` or blocks of columns ``(P, k)``.

    A method implements :meth:`_solve` on float64 columns ``(P, k)`` already on its device; :meth:`apply` checks
    the right-hand side and reshapes it, once for every method. ``size`` and ``device`` come from the operator's
    own tensors (or are given, for an operator that holds none).
    """

    method: str
    size: int
    damping: float
    dtype = torch.float64

    def apply(self, b: torch.Tensor) -> torch.Tensor:
        """``(H + damping I)^+ b`` for ``b`` ``(P,)`` or ``(P, k)``: float64, on the operator's device."""
        cols, vector = self._columns(b)
        out = self._solve(cols)
        return out.flatten() if vector else out

    def _solve(self, cols: torch.Tensor) -> torch.Tensor:
        """``(H + damping I)^+ cols`` for float64 columns ``(P, k)`` on the operator's device. (An operator written
        before this template overrides :meth:`apply` instead, and :meth:`_columns` is kept for it.)"""
        raise NotImplementedError(f"{type(self).__name__} implements neither _solve nor apply")

    def _columns(self, b: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """``b`` as float64 columns ``(P, k)`` on the device, and whether it was one vector: for operators that
        override :meth:`apply` themselves."""
        if b.shape[0] != self.size:
            raise InterpError(
                f"the operator is {self.size} x {self.size}; got a right-hand side of shape {tuple(b.shape)}"
            )
        return b.to(self.device, self.dtype).reshape(self.size, -1), b.dim() == 1

    @abstractmethod
    def info(self) -> dict:
        """JSON-ready facts about the operator (method, size, rank kept, cut-off, residuals...)."""

    def report(self) -> list[str]:
        """What a command prints about this operator beyond each setting's kept/dropped line, one line each."""
        return []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.size

    def spectrum(self) -> np.ndarray | None:
        """Every eigenvalue of ``H`` (damping not added), ascending, where the method has them; else None."""
        return None

    def dropped_norm_share(self, g: torch.Tensor) -> float:
        """Share of the gradients' squared norm in directions the operator drops (0 for a full inverse)."""
        return 0.0

    def with_settings(self, *, rcond: float | str | None = "same", damping: float | None = None):
        """The same factorisation under another cut-off and/or damping, where the method allows it; else None."""
        return None


KINDS = {"dense": "a dense (P, P) matrix", "hvp": "Hessian-vector products (matvec)",
         "model": "the model, its training batches and the parameter names"}  # fmt: skip


@dataclass(frozen=True)
class Curvature:
    """What an inverse is built from, in exactly one of three forms (its :attr:`kind`):

    * ``"dense"``: ``matrix``, the ``(P, P)`` curvature;
    * ``"hvp"``: ``matvec``, products ``v -> H v`` on columns ``(P, k)`` (e.g. a
      :class:`interp.curvature.CurvatureProducts`);
    * ``"model"``: ``model``, its training batches ``data`` and the selected parameter ``params``, for methods that
      build their own curvature (the GGN, its blocks, K-FAC, EK-FAC, Arnoldi).

    ``device`` is where the products run and the operator's results live. A registered method names the kind it
    needs (:attr:`InverseMethod.needs`), and :func:`build_inverse` refuses another.
    """

    size: int
    matrix: torch.Tensor | None = None
    matvec: Callable[[torch.Tensor], torch.Tensor] | None = None
    device: torch.device | str = "cpu"
    model: torch.nn.Module | None = None
    data: Iterable | None = None
    params: Sequence[str] | None = None

    def __post_init__(self):
        forms = [k for k, given in (("dense", self.matrix is not None), ("hvp", self.matvec is not None),
                                    ("model", self.model is not None)) if given]  # fmt: skip
        if len(forms) > 1:
            raise InterpError(f"a Curvature is one of {', '.join(KINDS)} (matrix, matvec or model); got "
                              f"{' and '.join(forms)}")  # fmt: skip
        if forms == ["model"] and (self.data is None or self.params is None):
            raise InterpError("a model curvature needs the model, its training batches (data) and the parameter names")

    @property
    def kind(self) -> str | None:
        """``"dense"``, ``"hvp"`` or ``"model"``; None where no curvature was given (no method can be built)."""
        if self.matrix is not None:
            return "dense"
        return "hvp" if self.matvec is not None else "model" if self.model is not None else None

    def names(self) -> list[str]:
        """The selected parameter names of a model curvature, each once, in ``named_parameters`` order (the layout
        of the per-example gradients; overlapping paths such as ``layer3.1`` and ``layer3.1.conv2`` name a tensor
        once)."""
        return list(select_params(self.model, list(self.params)))


NEEDS = tuple(KINDS)
_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class InverseMethod:
    """A named way to build ``(H + damping I)^+``: one registry entry.

    ``build(curvature, *, damping, progress, [rcond,] **options) -> InverseOperator`` is called with exactly the
    settings the method reads: ``rcond`` where ``cutoff`` (the cut-off applies; ``default_rcond`` is what a command
    takes when none is asked), and the fields of ``options``, a dataclass of the method's own settings (each field
    with its default and ``metadata["help"]``, checked in its ``__post_init__``; a command offers each as a flag
    ``--field-name``). ``needs``: the :attr:`Curvature.kind` it is built from. ``damped``: whether it needs
    ``damping > 0``. ``shared``: the method that factorises once for several (cut-off, damping) settings (its
    operators answer :meth:`InverseOperator.with_settings`); None builds one operator per setting.
    """

    name: str
    build: Callable[..., InverseOperator]
    needs: str = "dense"
    cutoff: bool = True
    shared: str | None = None
    help: str = ""
    damped: bool = False
    default_rcond: str = "paper"
    options: type | None = None

    def __post_init__(self):
        """An entry is checked when it is declared, so a bad one never reaches the registry's callers."""
        if not isinstance(self.name, str) or not _METHOD_NAME.fullmatch(self.name):
            raise InterpError(f"an inverse method's name must be a non-empty string of letters, digits, '_', '-' or "
                              f"'.', starting with a letter or digit; got {self.name!r}")  # fmt: skip
        if not callable(self.build):
            raise InterpError(f"inverse method {self.name!r}: build must be callable "
                              "(curvature, *, damping, progress, [rcond,] **options) -> InverseOperator; got "
                              f"{type(self.build).__name__}")  # fmt: skip
        if self.needs not in NEEDS:
            raise InterpError(f"inverse method {self.name!r} needs one of {NEEDS} curvature, got {self.needs!r}")
        for flag in ("cutoff", "damped"):
            if not isinstance(getattr(self, flag), bool):
                raise InterpError(f"inverse method {self.name!r}: {flag} must be True or False, "
                                  f"got {getattr(self, flag)!r}")  # fmt: skip
        if self.shared is not None and not (isinstance(self.shared, str) and _METHOD_NAME.fullmatch(self.shared)):
            raise InterpError(f"inverse method {self.name!r}: shared must be None or a method name, got {self.shared!r}")
        if not isinstance(self.help, str):
            raise InterpError(f"inverse method {self.name!r}: help must be a string, got {type(self.help).__name__}")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise InterpError(f"inverse method {self.name!r}: options must be a dataclass of its settings, got "
                              f"{self.options!r}")  # fmt: skip
        resolve_rcond(self.default_rcond, 1)

    def option_fields(self) -> list[dataclasses.Field]:
        """The method's own settings (its ``options`` dataclass's fields), in declaration order."""
        return list(dataclasses.fields(self.options)) if self.options is not None else []

    def resolve_options(self, given: dict) -> dict:
        """The method's options, ``given`` over their defaults, checked by the options class; a name the method
        does not own is an :class:`InterpError` that lists those it has."""
        own = [f.name for f in self.option_fields()]
        foreign = sorted(set(given) - set(own))
        if foreign:
            raise InterpError(f"inverse method {self.name!r} takes no option {', '.join(foreign)}; its options: "
                              f"{', '.join(own) or 'none'}")  # fmt: skip
        return dataclasses.asdict(self.options(**given)) if self.options is not None else {}


class InverseRegistry:
    """Inverse methods by name. A new method is one :class:`InverseOperator` class and one :meth:`register` call
    (or :func:`interp.register_inverse`); every caller resolves names here."""

    def __init__(self):
        self._methods: dict[str, InverseMethod] = {}

    def register(self, method: InverseMethod, replace: bool = False) -> InverseMethod:
        if not isinstance(method, InverseMethod):
            raise InterpError(f"register takes an InverseMethod, got {type(method).__name__}")
        if method.name in self._methods and not replace:
            raise InterpError(f"an inverse method named {method.name!r} is registered already; pass replace=True")
        for other in self._methods.values():  # one flag per option name: two methods may share a name by its class
            clash = {f.name for f in method.option_fields()} & {f.name for f in other.option_fields()}
            if clash and other.options is not method.options and other.name != method.name:
                raise InterpError(f"inverse method {method.name!r}: option {', '.join(sorted(clash))} is "
                                  f"{other.name!r}'s already; name it after the method")  # fmt: skip
        self._methods[method.name] = method
        return method

    def unregister(self, name: str) -> None:
        self._methods.pop(name, None)

    def get(self, name: str) -> InverseMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise InterpError(f"unknown inverse method {name!r}; registered: {', '.join(self._methods)}") from None

    def names(self) -> list[str]:
        return list(self._methods)

    def methods(self) -> list[InverseMethod]:
        return list(self._methods.values())

    def option_owners(self) -> dict[str, list[str]]:
        """Every option name of every registered method, with the methods that read it."""
        owners: dict[str, list[str]] = {}
        for m in self._methods.values():
            for f in m.option_fields():
                owners.setdefault(f.name, []).append(m.name)
        return owners


INVERSES = InverseRegistry()


def register_inverse(name: str, build: Callable[..., InverseOperator], *, needs: str = "dense", cutoff: bool = True,
                     shared: str | None = None, help: str = "", damped: bool = False, default_rcond: str = "paper",
                     options: type | None = None, replace: bool = False) -> InverseMethod:  # fmt: skip
    """Register an inverse method under ``name`` for :func:`build_inverse` and ``influence --method NAME``.

    ``build(curvature: Curvature, *, damping, progress, [rcond,] **options) -> InverseOperator``; ``options``: a
    dataclass of the method's own settings, offered as flags; see :class:`InverseMethod`.
    """
    return INVERSES.register(InverseMethod(name, build, needs, cutoff, shared, help, damped, default_rcond, options),
                             replace=replace)  # fmt: skip


def build_inverse(name: str, curvature: Curvature, *, rcond=None, damping: float = 0.0, progress: bool = False,
                  **options) -> InverseOperator:  # fmt: skip
    """``(H + damping I)^+`` by the registered method ``name``, given exactly the settings it reads: ``rcond`` where
    the cut-off applies (None: ``exact``; a method without one refuses it) and its own ``options``."""
    method = INVERSES.get(name)
    if curvature.kind != method.needs:
        got = KINDS[curvature.kind] if curvature.kind else "no curvature"
        raise InterpError(f"the {name} inverse needs {KINDS[method.needs]}; got {got}")
    settings = {"damping": damping, "progress": progress, **method.resolve_options(options)}
    if method.cutoff:
        settings["rcond"] = rcond
    elif rcond is not None:
        raise InterpError(f"the {name} inverse has no cut-off; leave rcond out")
    if method.damped and not damping > 0:
        raise InterpError(f"the {name} inverse needs damping > 0 (its curvature has zero eigenvalues)")
    return method.build(curvature, **settings)
