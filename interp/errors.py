"""The exception ``interp`` raises for problems the caller can fix (sizes, names, settings)."""


class InterpError(ValueError):
    """Bad input to an ``interp`` function: an unknown parameter name, a matrix too large, ..."""


def require_finite(t, what: str) -> None:
    """Raise :class:`InterpError` naming ``what`` when tensor ``t`` holds NaN or Inf."""
    import torch

    if not bool(torch.isfinite(t).all()):
        raise InterpError(f"non-finite values (NaN or Inf) in {what}; the model or the data produce them")


FLOAT_DTYPES = ("float32", "float64")


def require_tensor(t, name: str, ndim: int | None = None, floating: bool = True):
    """``t`` as it is, after checking that it is a torch tensor of ``ndim`` dimensions and, with
    ``floating``, float32 or float64 (half precision has too few bits for a curvature solve)."""
    import torch

    if not isinstance(t, torch.Tensor):
        hint = "; convert it with torch.from_numpy" if type(t).__module__.startswith("numpy") else ""
        raise InterpError(f"{name} must be a torch.Tensor, got {type(t).__module__}.{type(t).__name__}{hint}")
    if ndim is not None and t.dim() != ndim:
        shape = {1: "(n,)", 2: "(n, P)"}.get(ndim, f"{ndim}-D")
        raise InterpError(f"{name} must be {ndim}-D {shape}, got shape {tuple(t.shape)}")
    if floating and str(t.dtype).removeprefix("torch.") not in FLOAT_DTYPES:
        raise InterpError(
            f"{name} must be float32 or float64, got {t.dtype}; "
            + ("half precision has too few bits for a curvature solve: cast with .double()"
               if t.is_floating_point() else "cast with .double()")  # fmt: skip
        )
    return t


def symmetry_tolerance(dtype) -> float:
    """Largest relative asymmetry accepted in a symmetric matrix of ``dtype``: round-off of a Hessian
    assembled in that precision, far below any real asymmetry."""
    import torch

    return 1e-6 if dtype == torch.float64 else 1e-3


def require_symmetric(h, name: str = "the Hessian", tol: float | None = None, block: int = 2048) -> None:
    """Raise unless ``max |H - H^T| <= tol * max |H|`` (checked in row blocks: no second P x P copy).

    Factorisations read one triangle only; an asymmetric input would silently give the inverse of
    neither ``H`` nor ``(H + H^T)/2``.
    """
    tol = symmetry_tolerance(h.dtype) if tol is None else tol
    scale = float(h.abs().max()) if h.numel() else 0.0
    worst = 0.0
    for start in range(0, h.shape[0], block):
        rows = h[start : start + block]
        worst = max(worst, float((rows - h[:, start : start + block].T).abs().max()) if rows.numel() else 0.0)
    if worst > tol * scale:
        raise InterpError(
            f"{name} is not symmetric: max |H - H^T| = {worst:.3g}, {worst / scale:.1%} of max |H| (tolerance {tol:g}); "
            "pass (H + H.T) / 2 if that is the matrix you mean"
        )


def require_k(k, available: int, name: str = "k") -> int:
    """An integer ``1 <= k <= available`` (the training images a row can rank), else :class:`InterpError`."""
    import numbers

    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InterpError(f"{name} must be an integer, got {k!r} ({type(k).__name__})")
    if not 1 <= k <= available:
        raise InterpError(f"{name} must be between 1 and {available} (the training images each row ranks), got {k}")
    return int(k)
