"""The repairs of app.transport, each reproduced deterministically with the real Panel and
Bokeh code paths (the sockets are Panel's own extension point for custom socket types)."""

import asyncio
import logging
import sys

import pytest
from bokeh.document import Document
from panel.io import document as panel_document

from app import transport


class _Socket:
    """A websocket whose writes finish when the test says so."""

    def __init__(self):
        self.sent: list[str] = []
        self.pending: list[asyncio.Future] = []


class _Connection:
    def __init__(self):
        self._socket = _Socket()


def _write(conn, msg=None, events=None):
    """Panel's hook for a socket type: record the message, return its (pending) write."""
    conn._socket.sent.append(msg)
    future = asyncio.get_running_loop().create_future()
    conn._socket.pending.append(future)
    return [future]


@pytest.fixture
def socket_type():
    panel_document.extra_socket_handlers[_Socket] = _write
    yield
    del panel_document.extra_socket_handlers[_Socket]


def _queue(doc, conn, msg):
    """What panel.io.document.schedule_write_events does, for an already made message."""
    panel_document._WRITE_BLOCK[doc] = True
    panel_document._WRITE_MSGS.setdefault(doc, {}).setdefault(conn, []).append(msg)
    panel_document._dispatch_write_task(doc, panel_document._dispatch_msgs, doc)


async def _race(doc, conn):
    """A message queued while an earlier write for the same document is still in flight."""
    _queue(doc, conn, "first")
    for _ in range(5):
        await asyncio.sleep(0)
    assert conn._socket.sent == ["first"]
    conn._socket.pending[0].set_result(None)  # the first write ends; before its task resumes,
    _queue(doc, conn, "second")  # another change of the session is queued
    for _ in range(20):
        await asyncio.sleep(0.001)
        for future in conn._socket.pending:
            if not future.done():
                future.set_result(None)
    return conn._socket.sent


def test_a_message_queued_during_a_write_is_written(socket_type):
    transport.install()
    doc, conn = Document(), _Connection()
    assert asyncio.run(_race(doc, conn)) == ["first", "second"]
    assert doc not in panel_document._WRITE_MSGS and doc not in panel_document._WRITE_BLOCK


def test_without_the_repair_panel_strands_it(socket_type, monkeypatch):
    """The defect itself, so the test above is known to exercise it."""
    original = panel_document._dispatch_msgs.__wrapped__
    monkeypatch.setattr(panel_document, "_dispatch_msgs", original)
    doc, conn = Document(), _Connection()
    assert asyncio.run(_race(doc, conn)) == ["first"]
    assert list(panel_document._WRITE_MSGS[doc][conn]) == ["second"]
    panel_document._WRITE_MSGS.pop(doc)


def _detached_assertion():
    """The exception Bokeh raises for a message handled after its connection closed."""
    from bokeh.server.connection import ServerConnection

    conn = ServerConnection.__new__(ServerConnection)
    conn._session = None
    try:
        conn.session  # noqa: B018 (the property asserts)
    except AssertionError:
        return sys.exc_info()
    raise AssertionError("bokeh no longer asserts here: revisit app.transport")


@pytest.mark.parametrize("name", transport.LOGGERS)
def test_a_closed_connections_message_is_one_info_line(caplog, name):
    transport.install()
    exc_info = _detached_assertion()
    assert transport.from_detached_connection(exc_info)
    logger = logging.getLogger(name)
    with caplog.at_level(logging.INFO, logger=name):
        logger.error("error handling message\n message: %r \n error: %r", "PATCH-DOC",
                     exc_info[1], exc_info=exc_info)
        logger.error("something else failed", exc_info=(ValueError, ValueError("x"), None))
    first, second = caplog.records
    assert first.levelname == "INFO" and first.exc_info is None
    assert "connection closed" in first.getMessage()
    assert second.levelname == "ERROR" and second.exc_info is not None


def test_a_write_to_a_closed_socket_nothing_waited_for_is_one_info_line(caplog):
    """asyncio's own report of a failed write task nobody awaited (a session closed while its
    messages were being written), produced by asyncio itself."""
    import gc

    from tornado.websocket import WebSocketClosedError

    transport.install()

    async def write():
        raise WebSocketClosedError()

    async def main():
        task = asyncio.ensure_future(write())
        await asyncio.sleep(0.01)
        assert task.done()

    with caplog.at_level(logging.INFO, logger="asyncio"):
        asyncio.run(main())
        gc.collect()  # the finished task is collected: asyncio reports its exception
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert records and all(r.levelname == "INFO" and r.exc_info is None for r in records)
    assert "written as its connection closed" in records[0].getMessage()
