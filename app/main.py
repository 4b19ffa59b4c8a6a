"""The dashboard page, built once per browser session from the process-wide store.

Run with ``panel serve app/ --args --data PATH --models DIR`` (or FKD_DATA / FKD_MODELS);
with nothing given it shows the demo data set and the runs in ``models/``.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # `panel serve app/` puts only app/ itself on sys.path
    sys.path.insert(0, _ROOT)

import panel as pn  # noqa: E402

from app.dashboard import Dashboard  # noqa: E402
from app.state import Settings, get_store  # noqa: E402

pn.extension("tabulator", "modal", notifications=False)

Dashboard(get_store(Settings.from_args(sys.argv[1:]))).servable(title="fkd dashboard")
