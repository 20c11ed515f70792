"""matplotlib for the demo's reports: PNG files only, never a window."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported when a report draws its first figure
    (matplotlib is an optional dependency and slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
