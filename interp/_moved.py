"""The module paths ``interp`` had before it was arranged in rooms (``curvature``, ``inverses``, ``viz``): each old
path keeps working, as the module at its new place, with a :class:`DeprecationWarning` that names it.

Done with one finder on ``sys.meta_path`` (the import system's own hook for this), installed once by
``interp/__init__.py``: an old path is a module whose attributes are the new module's, so state such as the inverse
registry is shared, never copied.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "interp.grads": "interp.curvature.grads",
    "interp.hessian": "interp.curvature.hessian",
    "interp.ggn": "interp.curvature.ggn",
    "interp.head": "interp.curvature.head,interp.influence",  # head_influence computes influence: at the top
    "interp.params": "interp.curvature.params",
    "interp.memory": "interp.curvature.memory",
    "interp.inverse": "interp.inverses",
    "interp.curvature_methods": "interp.inverses",
    "interp.arnoldi": "interp.inverses.arnoldi",
    "interp.kronecker": "interp.inverses.kronecker",
    "interp.blockdiag": "interp.inverses.exact",
    "interp.lowrank": "interp.inverses.lowrank",
    "interp.featviz": "interp.viz.featviz",
    "interp.saliency": "interp.viz.saliency",
    "interp.plots": "interp.viz.plots",
}


def _proxy(old: str, new: str) -> types.ModuleType:
    """A module named ``old`` whose every attribute is one of the new modules' (``new``: comma-separated, searched in
    order; PEP 562 ``__getattr__``): the objects are the same, only the path differs; the new modules keep their own
    ``__spec__`` and name."""
    targets = [importlib.import_module(name) for name in new.split(",")]

    def attribute(name: str):
        for target in targets:
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"module {old!r} (moved to {new}) has no attribute {name!r}")

    proxy = types.ModuleType(old, f"Moved to {new}: {targets[0].__doc__ or ''}")
    proxy.__getattr__ = attribute
    proxy.__dir__ = lambda: sorted({n for t in targets for n in dir(t)})
    proxy.__all__ = [n for t in targets for n in getattr(t, "__all__", [n for n in dir(t) if not n.startswith("_")])]
    return proxy


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return _proxy(spec.name, self.new)

    def exec_module(self, module) -> None:
        pass  # nothing to run: the proxy reads the new module


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds each old path of :data:`MOVED` as a proxy of its new module, warning that it moved."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {' and '.join(new.split(','))}; import it from there (the old path will be "
                      "removed)",
                      DeprecationWarning, stacklevel=3)  # fmt: skip
        return importlib.util.spec_from_loader(fullname, _Alias(new))


# old module paths whose last part is also a name ``interp`` exports (``interp.hessian``, the function): importing
# them would set the package's attribute to the module and hide the function, so they are in place from the start
SHADOWED = ("interp.hessian",)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once), and the old paths that shadow an exported name in place."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
    for old in SHADOWED:
        sys.modules.setdefault(old, _proxy(old, MOVED[old]))
