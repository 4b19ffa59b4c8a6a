"""How the views change a session's page: slow work off the event loop, heavy page building in
one process-wide lane, and every change of Bokeh models made in that session's own document,
with its lock held, in one Panel hold.

The entry points, one mechanism (:func:`_queue`: a next-tick callback of the session's
document, scheduled through ``pn.state.execute``, whose body runs inside ``pn.io.hold``):

- :func:`compute_then_update` — slow work (predictions, a model, a flip audit, TensorFlow)
  in a worker thread, then the view's update in the session that asked for it;
- :func:`on_click` — a button's handler;
- :func:`in_document` — a decorator for the views' param watchers;
- :func:`build_later` — building a tab (tens to hundreds of milliseconds of the loop), in the
  build lane;
- :func:`in_own_turn` — the later part of such a build, next in the lane (and
  :func:`in_parts`, a build written as a generator, one part per step);
- :func:`collect_garbage_in_lane` — Python's full garbage collections, in the lane too.

Why each part:

- A worker thread must not call ``doc.add_next_tick_callback`` itself: Bokeh announces the
  new callback under ``curdoc()`` patched on a process-wide stack
  (``bokeh.io.doc._PATCHED_CURDOCS``); pushing onto it from another thread interleaves with
  the event loop's pushes and pops, so for a moment the loop sees another session's
  document as current. Here the worker only computes; its completion is handled on the
  event loop thread (an asyncio future's done-callback).
- Panel runs a click, and a widget change still pending when a click arrives, as an
  *unlocked* coroutine (``Reactive._server_event`` / ``_event_coroutine``). The views write
  Bokeh models (a figure's sources) directly, and Bokeh raises ``_pending_writes should be
  non-None`` for a write without the lock. A next-tick callback runs with the lock.
- Panel sends its panes' and widgets' changes itself (``pn.io.unlocked``), possibly queued
  behind a busy websocket, while a direct Bokeh write goes out through Bokeh's own queue: the
  second can overtake the first, and the browser then meets a model it has not been sent yet
  (``reference pNNNN isn't known``). Inside ``pn.io.hold`` both kinds of change are collected
  and sent by Panel, in order.
- Building a tab creates a hundred or more Bokeh models: 0.1–0.3 s of the one event loop
  that serves every session. When many sessions build at once (a team opening the
  augmentation tab together), the loop's first-in-first-out queue made a page turn wait for
  all of their builds — over a second (``bench_load.py``, 20 sessions). The lane runs one
  build part at a time for the whole process and leaves the loop free for a moment after
  each, so a page turn or a click waits for at most one part; builds a user asked for go
  before prefetches.
- Python's full garbage collection walks every object of the process (half a million with
  20 sessions): 0.1–0.3 s of the loop, started whenever the long-lived objects have grown
  by a quarter — in the middle of a build part or a page turn. Here it runs in the lane
  instead, as a prefetch every :data:`GC_PERIOD_S`, never on top of a build part.

Without a server (tests, scripts, Panel's warm-up run of the page) everything runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import panel as pn
from panel.io.state import set_curdoc

from app import transport
from app.state import Unavailable

log = logging.getLogger(__name__)
transport.install()

#: The process's workers for every session's slow work (the store makes concurrent requests
#: for the same run wait for one computation, so a few threads are enough).
WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fkd-work")


def session_doc():
    """The current session's document, or None outside a served session."""
    doc = pn.state.curdoc
    return doc if doc is not None and doc.session_context is not None else None


@contextlib.contextmanager
def one_recompute():
    """Build many Bokeh models at once with one walk of the session's document.

    Bokeh finds a document's models by walking every reference from its roots, and Panel
    asks for that walk after each layout change that adds models: a tab built in four steps
    walked the whole page four times (about 0.1 s each once a few tabs exist). Only for code
    that adds models: leaving a freeze always walks once."""
    doc = session_doc()
    if doc is None:
        yield
        return
    with doc.models.freeze():
        yield


def _queue(doc, fn: Callable[[], None]) -> None:
    """Run ``fn`` as the next-tick callback of ``doc`` (locked, ``doc`` current), inside one
    Panel hold; dropped if the session has closed."""
    if doc.session_context.destroyed:
        return

    def held() -> None:
        with pn.io.hold(doc):
            fn()

    with set_curdoc(doc):
        pn.state.execute(held, schedule=True)


#: Seconds the lane leaves the event loop to other work after each build part: enough for a
#: page turn's few callbacks to run through (each is a millisecond or two).
LANE_GAP_S = 0.04
#: Seconds the lane waits for one part before it moves on anyway (a part is waited for only
#: while its session is open: Bokeh drops a closed session's callbacks unrun).
LANE_PART_TIMEOUT_S = 30.0


class _Lane:
    """The process's queue of page-building work: one part at a time, user-requested builds
    before prefetches, a build's later parts next in their build's queue (so a click's build
    overtakes a prefetch between two of its parts)."""

    def __init__(self):
        self.urgent: deque = deque()
        self.prefetch: deque = deque()
        self.running = False
        self.in_part = False
        self._part_urgent = False
        self._follow: list = []
        self._rushed: set = set()  # later parts of prefetches a user now waits for
        self.parts_done = 0
        self._task: asyncio.Task | None = None

    def add(self, doc, fn: Callable[[], None], urgent: bool) -> None:
        if self.in_part:  # a later part of the build running now: it goes next
            self._follow.append((doc, fn))
        else:
            (self.urgent if urgent or fn in self._rushed else self.prefetch).append((doc, fn))
        if not self.running:
            self.running = True
            # Kept: the event loop holds its tasks only weakly.
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.urgent or self.prefetch:
                self._part_urgent = bool(self.urgent)
                doc, fn = (self.urgent or self.prefetch).popleft()
                done = loop.create_future()
                if doc is None:  # the process's own work (a garbage collection)
                    self._run(fn, done)
                    await asyncio.sleep(LANE_GAP_S)
                    continue
                if doc.session_context is None or doc.session_context.destroyed:
                    self._rushed.discard(fn)  # a closed session's build never ends
                    continue
                _queue(doc, functools.partial(self._run, fn, done, time.perf_counter()))
                waited = 0.0
                while not done.done() and not doc.session_context.destroyed:
                    if waited >= LANE_PART_TIMEOUT_S:
                        log.warning("a build part did not run within %.0f s", waited)
                        break
                    await asyncio.wait([done], timeout=0.25)
                    waited += 0.25
                if not done.done():  # its session closed first: the build ends here
                    self._rushed.discard(fn)
                await asyncio.sleep(LANE_GAP_S)
        finally:
            self.running = False

    def rush(self, fn: Callable[[], None]) -> None:
        """A user now waits for the prefetch whose later parts are ``fn``: its queued part and
        the parts after it go with the asked-for builds."""
        self._rushed.add(fn)
        for item in [item for item in self.prefetch if item[1] is fn]:
            self.prefetch.remove(item)
            self.urgent.append(item)

    def done_rushing(self, fn: Callable[[], None]) -> None:
        self._rushed.discard(fn)

    def _run(self, fn: Callable[[], None], done, queued: float | None = None) -> None:
        self.in_part = True
        t0 = time.perf_counter()
        try:
            fn()
        finally:
            log.debug("build part %s: %.0f ms (%.0f ms after it was queued)",
                      getattr(fn, "__qualname__", None) or fn, 1000 * (time.perf_counter() - t0),
                      1000 * (t0 - (queued or t0)))
            self.in_part = False
            for item in reversed(self._follow):
                rushed = self._part_urgent or item[1] in self._rushed
                (self.urgent if rushed else self.prefetch).appendleft(item)
            self._follow = []
            self.parts_done += 1
            if not done.done():
                done.set_result(None)


LANE = _Lane()


#: Seconds between two full garbage collections of a served process (see the module's
#: docstring).
GC_PERIOD_S = 60


def collect_garbage_in_lane() -> None:
    """Stop Python's own full collections in a served process and make one in the lane every
    GC_PERIOD_S instead; the young generations are still collected as usual (they are small).
    Nothing outside a served session (tests, scripts, Panel's warm-up run of the page).
    Idempotent: every session's page calls it."""
    if session_doc() is None:
        return
    gc.set_threshold(*gc.get_threshold()[:2], 2**31 - 1)
    pn.state.schedule_task("fkd-full-gc", _collect_later, period=f"{GC_PERIOD_S}s")


def _collect_later() -> None:
    LANE.add(None, gc.collect, urgent=False)


def build_later(fn: Callable[[], None], urgent: bool = True) -> None:
    """Run ``fn`` (building part of a page) in the process's build lane, as a locked, held
    update of the calling session; ``urgent`` when a user waits for it, else a prefetch."""
    doc = session_doc()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        doc = None
    if doc is None:
        fn()
    else:
        LANE.add(doc, fn, urgent)


def in_own_turn(fn: Callable[[], None]) -> None:
    """Run ``fn``, the later part of a build, next in the build lane: a long build split into
    parts lets other sessions' clicks in between."""
    build_later(fn, urgent=True)


def in_parts(parts: Iterator[None], then: Callable[[], None] | None = None) -> Callable[[], None]:
    """Run a build written as a generator, each step up to its next ``yield`` one part of the
    lane (next in its own build's queue), then ``then()``. Returns ``rush()``: a user now
    waits for this build (a prefetch until then), so its remaining parts go with the builds
    users asked for."""
    def step() -> None:
        try:
            more = next(parts, _DONE) is not _DONE
        except Exception:  # a broken build shows what it has, not a spinner for ever
            log.exception("a build part failed")
            more = False
        if more:
            in_own_turn(step)
            return
        LANE.done_rushing(step)
        if then is not None:
            then()

    in_own_turn(step)
    return functools.partial(LANE.rush, step)


_DONE = object()


def compute_then_update(work: Callable[[], object], update: Callable[[], None]) -> None:
    """Run ``work()`` in a worker thread, then ``update()`` in the calling session.

    ``work`` touches only shared data (the store), never a Bokeh or Panel object; an
    :class:`~app.state.Unavailable` it raises is expected (the store keeps the reason, and
    ``update`` asks the store again and shows it).
    """
    doc = session_doc()
    try:
        loop = asyncio.get_running_loop()  # a session's callbacks run on the server's loop
    except RuntimeError:  # a document built with no loop running (Panel's --warm run)
        doc = None
    if doc is None:
        _run(work)
        update()
        return
    future = loop.run_in_executor(WORKERS, _run, work)
    future.add_done_callback(lambda _: _queue(doc, update))  # called on the loop's thread


def _run(work: Callable[[], object]) -> None:
    try:
        work()
    except Unavailable:
        pass
    except Exception:  # update() meets it again and shows it
        log.exception("background work failed")


def on_click(button, handler: Callable[[], None]) -> None:
    """``button.on_click(handler)``, the handler run as described in the module docstring."""
    def clicked(_event) -> None:
        doc = session_doc()
        if doc is None:
            handler()
        else:
            _queue(doc, handler)

    button.on_click(clicked)


def in_document(method):
    """Decorator for a view's param watchers (and other change handlers) that write Bokeh
    models: the call runs as described in the module docstring.

    A call without arguments (a ``param.depends(..., watch=True)`` watcher: it reads the view's
    current state) is queued once: further calls while it waits, or while it runs (the
    changes a handler makes itself, such as a view's batched choices), are covered by it.
    Without this, one user action that sets three parameters would redraw three times — and
    send the page's images three times.
    """
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        doc = session_doc()
        if doc is None:
            return method(self, *args, **kwargs)
        if args or kwargs:
            _queue(doc, functools.partial(method, self, *args, **kwargs))
            return None
        pending = vars(self).setdefault("_fkd_pending_calls", set())
        if name in pending:
            return None
        pending.add(name)

        def once() -> None:
            try:
                method(self)
            finally:
                pending.discard(name)

        _queue(doc, once)
        return None

    return wrapper
