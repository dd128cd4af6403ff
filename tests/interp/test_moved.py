"""The module paths interp had before its rooms keep working, as the new modules, and say where they went."""

import importlib
import sys
import warnings

import pytest

import interp
from interp._moved import MOVED, SHADOWED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_new_module_and_warns_naming_it(old, monkeypatch):
    if old not in SHADOWED:  # in place from the start: interp.hessian is also the function interp exports
        monkeypatch.delitem(sys.modules, old, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    first = MOVED[old].split(",")[0]
    new = importlib.import_module(first)
    name = next(n for n in new.__all__ if hasattr(new, n)) if hasattr(new, "__all__") else next(
        n for n in dir(new) if not n.startswith("_"))  # fmt: skip
    assert getattr(module, name) is getattr(new, name)  # the same objects, not copies
    if old not in SHADOWED:
        assert any(first in str(w.message) and w.category is DeprecationWarning for w in caught)


def test_the_names_users_imported_from_the_old_paths_are_there():
    from interp.head import head_influence, linear_head_hessian
    from interp.inverse import INVERSES, Curvature, pseudo_inverse, register_inverse
    from interp.kronecker import FISHER_DEFAULT

    assert head_influence is interp.head_influence and pseudo_inverse is interp.pseudo_inverse
    assert INVERSES is interp.INVERSES and Curvature is interp.Curvature and register_inverse is interp.register_inverse
    assert callable(linear_head_hessian) and FISHER_DEFAULT == "type-2"
    assert callable(interp.hessian)  # the function, not the module of the same name
    with pytest.warns(DeprecationWarning, match="interp.hessian_vector_product"):
        from interp.influence import hessian_vector_product
    assert hessian_vector_product is interp.hessian_vector_product
