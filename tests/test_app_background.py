"""The build lane of app.background: which build part runs when, on a real event loop."""

import asyncio

from app.background import _Lane


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
