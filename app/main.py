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
from bokeh.settings import settings as bokeh_settings  # noqa: E402
from panel.io.resources import get_dist_path  # noqa: E402

from app.augment_view import warm_up_in_background  # noqa: E402
from app.background import collect_garbage_in_lane  # noqa: E402
from app.dashboard import Dashboard  # noqa: E402
from app.state import Settings, get_store  # noqa: E402

# Every script and stylesheet (Bokeh's and Panel's) from this server, never a CDN,
# whatever BOKEH_RESOURCES says: the page must work offline and leak nothing to third parties.
bokeh_settings.resources = "server"
pn.extension(notifications=False)
if pn.state.curdoc is not None:
    # Panel points its components' stylesheets at the server when it renders the page's HTML;
    # a session Bokeh makes from a websocket (the page's own session expired while a busy
    # server was slow to connect it) never gets that, and would fetch them from Panel's CDN.
    pn.state.curdoc.template_variables.setdefault("dist_url", get_dist_path(cdn=False))

store = get_store(Settings.from_args(sys.argv[1:]))
collect_garbage_in_lane()  # in a served process only: see app.background
warm_up_in_background(store)  # once per process: the first session (or `--warm`) starts it
Dashboard(store).servable(title="fkd dashboard")
