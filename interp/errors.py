"""The exception ``interp`` raises for problems the caller can fix (sizes, names, settings)."""


class InterpError(ValueError):
    """Bad input to an ``interp`` function: an unknown parameter name, a matrix too large, ..."""
