"""The demo: its stages (ordinary commands, resumable, with time left) and its self-contained report."""
