"""Four repairs to how Panel and Bokeh talk to browsers, for a server with many busy sessions.

All were found by ``benchmarks/bench_load.py`` (40 sessions on one server) and are installed
once per process by :func:`install` (``app.background`` calls it on import).

1. **Stranded writes** (Panel 1.9, ``panel.io.document``). When a session's socket is busy,
   Panel queues a change's message (``_WRITE_MSGS``), marks the document blocked
   (``_WRITE_BLOCK``) and starts a task that writes the queue once the socket is free. A task
   that was already writing for that document clears the mark when it finishes, even if a
   message was queued meanwhile; the new task then finds no mark and returns, and the message
   waits for the session's *next* change. A page waiting for that very message — the Faces
   tab's first page — then waits forever. :func:`_keep_writing` wraps the write task: when
   one ends with messages still queued and no task left to write them, it starts one.
2. **A closed connection's last message** (Bokeh 3.9, ``bokeh.server``). A message that
   arrives while its browser tab is being closed is handled after Bokeh has detached the
   connection from its session; Bokeh then logs ``AssertionError`` from
   ``ServerConnection.session`` with a traceback, as if the server had failed. Nothing is
   lost (the session is gone), so :class:`_ClosedConnection` turns those records into one
   INFO line.
3. **A closed socket's unfinished writes** (Panel 1.9, ``panel.io.document``). When a session
   closes while its messages are being written, Panel cancels the task that waits for the
   writes; the writes themselves then fail with ``WebSocketClosedError`` and, as nothing
   waits for them any more, asyncio logs each as "Task exception was never retrieved" with
   a traceback. Nothing is lost (the page is gone), so those records become one INFO line
   too (also :class:`_ClosedConnection`).
4. **Nagle's delay** (Tornado's default for websockets). A Bokeh message is several websocket
   frames — header, metadata, content, then one per binary buffer (a face's image) — written
   back to back; with Nagle's algorithm on, a frame written while the previous one is not yet
   acknowledged waits for the browser's delayed ACK (about 40–90 ms measured on localhost):
   a face's detail arrived in 75 ms, its image 90 ms later. :func:`_no_delay` turns it off for
   every websocket, as Tornado's documentation suggests for interactive use.
"""

from __future__ import annotations

import functools
import logging
import traceback
from pathlib import PurePath

from panel.io import document as panel_document

#: The loggers that report a message handled (or written) after its connection closed:
#: Bokeh's protocol handler (a PATCH-DOC), its websocket handler, Tornado's callback runner
#: and asyncio (a write nothing waited for).
LOGGERS = ("bokeh.server.protocol_handler", "bokeh.server.views.ws", "tornado.application",
           "asyncio")


def _keep_writing(dispatch):
    """``panel.io.document._dispatch_msgs``, restarted while messages are left unwritten."""
    original = getattr(dispatch, "__wrapped__", dispatch)

    @functools.wraps(original)
    async def dispatch_all(doc):
        await original(doc)
        if panel_document._WRITE_MSGS.get(doc) and doc not in panel_document._WRITE_BLOCK:
            panel_document._WRITE_BLOCK[doc] = True
            panel_document._dispatch_write_task(doc, dispatch_all, doc)

    return dispatch_all


def _no_delay(open_):
    """``WSHandler.open`` that first disables Nagle's algorithm on the connection."""
    @functools.wraps(open_)
    def open_without_delay(self, *args, **kwargs):
        self.set_nodelay(True)
        return open_(self, *args, **kwargs)

    open_without_delay.fkd_no_delay = True
    return open_without_delay


def from_detached_connection(exc_info) -> bool:
    """Whether a logged exception is Bokeh's assertion that a connection still has its
    session (``bokeh/server/connection.py``, property ``session``)."""
    if not exc_info or not isinstance(exc_info[1], AssertionError):
        return False
    frames = traceback.extract_tb(exc_info[2])
    if not frames:
        return False
    last = frames[-1]
    return last.name == "session" and PurePath(last.filename).parts[-3:] == (
        "bokeh", "server", "connection.py")


def written_to_closed_socket(exc_info) -> bool:
    """Whether a logged exception is a websocket write that failed because the socket had
    closed."""
    from tornado.websocket import WebSocketClosedError

    return bool(exc_info) and isinstance(exc_info[1], WebSocketClosedError)


class _ClosedConnection(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if from_detached_connection(record.exc_info):
            record.msg = "dropped a message that arrived as its connection closed"
        elif written_to_closed_socket(record.exc_info):
            record.msg = "dropped a message written as its connection closed"
        else:
            return True
        record.levelno, record.levelname, record.args = logging.INFO, "INFO", ()
        record.exc_info = record.exc_text = None
        return True


def install() -> None:
    """Apply the four repairs (idempotent)."""
    from bokeh.server.views.ws import WSHandler

    if not hasattr(panel_document._dispatch_msgs, "__wrapped__"):
        panel_document._dispatch_msgs = _keep_writing(panel_document._dispatch_msgs)
    if not getattr(WSHandler.open, "fkd_no_delay", False):
        WSHandler.open = _no_delay(WSHandler.open)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ClosedConnection) for f in logger.filters):
            logger.addFilter(_ClosedConnection())
