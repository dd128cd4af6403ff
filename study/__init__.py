"""What needs both halves: influence over a fine-tuned run directory, and the files it writes.

``interp`` knows nothing of ``transfer`` and ``transfer`` nothing of ``interp``; this package
joins them and is what the CLI calls.
"""
