"""The build lane of app.background: which build part runs when, on a real event loop."""

import asyncio
import logging

from app.background import _Lane, in_parts


def test_build_lane_runs_asked_for_builds_first_and_each_build_to_its_end():
    lane, order = _Lane(), []

    def asked(name):
        def part_one():
            order.append(f"{name} 1")
            lane.add(None, lambda: order.append(f"{name} 2"), urgent=True)  # its next part
        return part_one

    async def main():
        lane.add(None, lambda: order.append("prefetch"), urgent=False)
        lane.add(None, asked("click a"), urgent=True)
        lane.add(None, asked("click b"), urgent=True)
        while lane.running or not order:
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert order == ["click a 1", "click a 2", "click b 1", "click b 2", "prefetch"]
    assert lane.parts_done == 5


def test_build_lane_lets_other_work_run_between_parts():
    """What makes a page turn wait for one build part at most: the loop's other callbacks run
    between two parts, and a click arriving meanwhile overtakes a prefetch's later parts."""
    lane, order = _Lane(), []

    async def main():
        loop = asyncio.get_running_loop()

        def prefetch_part_one():
            order.append("prefetch 1")
            lane.add(None, lambda: order.append("prefetch 2"), urgent=False)
            loop.call_soon(order.append, "page turn")
            loop.call_soon(lane.add, None, lambda: order.append("click"), True)

        lane.add(None, prefetch_part_one, urgent=False)
        while lane.running or not order:
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert order == ["prefetch 1", "page turn", "click", "prefetch 2"]


def test_build_in_parts_runs_each_step_then_the_rest():
    """Without a server (tests, scripts) the steps run at once, in order, then ``then``."""
    order = []

    def build():
        order.append("objects")
        yield
        order.append("layout")
        yield
        order.append("drawn")

    in_parts(build(), lambda: order.append("into the page"))
    assert order == ["objects", "layout", "drawn", "into the page"]


def test_a_failing_build_part_still_ends_the_build(caplog):
    """A step that raises ends the build with what it has (the page shows the tab, not a
    spinner for ever) and logs why."""
    order = []

    def build():
        order.append("objects")
        yield
        raise ValueError("a broken run folder")

    with caplog.at_level(logging.ERROR, logger="app.background"):
        in_parts(build(), lambda: order.append("into the page"))
    assert order == ["objects", "into the page"]
    assert "a broken run folder" in caplog.text


def test_a_prefetch_a_user_now_waits_for_goes_before_other_prefetches():
    """A click on a tab whose prefetch is half built rushes that build: its queued part and
    the parts after it go with the builds users asked for, ahead of other prefetches."""
    lane, order = _Lane(), []

    def later_part():
        order.append("augment 2")
        lane.add(None, lambda: order.append("augment 3"), urgent=True)

    async def main():
        loop = asyncio.get_running_loop()

        def first_part():
            order.append("augment 1")
            lane.add(None, later_part, urgent=True)  # next in its build's (prefetch) queue
            loop.call_soon(lane.add, None, lambda: order.append("other prefetch"), False)
            loop.call_soon(lane.add, None, lambda: order.append("a click"), True)
            loop.call_soon(lane.rush, later_part)  # the user clicks Augment
            loop.call_soon(lane.add, None, lambda: order.append("another click"), True)

        lane.add(None, first_part, urgent=False)
        while lane.running or not order:
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert order == ["augment 1", "a click", "augment 2", "augment 3", "another click",
                     "other prefetch"]
