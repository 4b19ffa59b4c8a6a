"""Where the data and the runs are: one rule for every command and the dashboard.

A flag wins, then the environment (``FKD_DATA``, ``FKD_MODELS``), then the default (the
embedded demo set; ``models/`` in the working folder). ``fkd train`` and ``fkd serve`` in
the same shell therefore always agree on where runs live.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATA_ENV = "FKD_DATA"
MODELS_ENV = "FKD_MODELS"
DEFAULT_MODELS = "models"


def data_path(flag: str | os.PathLike | None = None,
              environ: Mapping[str, str] = os.environ) -> Path | None:
    """The data folder or archive to use; None means the embedded demo set."""
    value = flag if flag not in (None, "") else environ.get(DATA_ENV) or None
    return None if value is None else Path(value)


def models_dir(flag: str | os.PathLike | None = None,
               environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of runs to read and write."""
    value = flag if flag not in (None, "") else environ.get(MODELS_ENV) or DEFAULT_MODELS
    return Path(value)
