"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(ValueError):
    """A mistake the user can fix: bad input, a missing file, an unknown name, no network.

    A ``ValueError``, so API callers that catch bad argument values catch it too.
    """
