"""The exception ``interp`` raises for problems the caller can fix (sizes, names, settings)."""


class InterpError(ValueError):
    """Bad input to an ``interp`` function: an unknown parameter name, a matrix too large, ..."""


def require_finite(t, what: str) -> None:
    """Raise :class:`InterpError` naming ``what`` when tensor ``t`` holds NaN or Inf."""
    import torch

    if not bool(torch.isfinite(t).all()):
        raise InterpError(f"non-finite values (NaN or Inf) in {what}; the model or the data produce them")
