"""Progress bars that render as widgets in Jupyter and as text in a terminal (tqdm.auto)."""
from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, **kwargs):
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
