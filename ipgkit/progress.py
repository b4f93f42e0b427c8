"""The one progress bar of every long call: tqdm's notebook widget where ipywidgets is installed,
its text bar elsewhere.

``progress=False`` silences one call; ``IPGKIT_PROGRESS=0`` in the environment silences them all
(logs, saved notebook outputs). The warning ``tqdm.auto`` prints on import in a notebook that
lacks ipywidgets is kept out of every output (``import ipgkit`` imports this module first, before
TransformerLens imports ``tqdm.auto`` itself).
"""

import os
import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm as _tqdm


def tqdm(*args, disable: bool = False, **kwargs):
    """``tqdm.auto.tqdm``, also disabled when ``IPGKIT_PROGRESS=0``."""
    silenced = os.environ.get("IPGKIT_PROGRESS", "1").strip() in ("0", "false", "no")
    return _tqdm(*args, disable=disable or silenced, **kwargs)


__all__ = ["tqdm"]
