"""When the manager's loops (orchestrator, allocator, scheduler) run a pass.

Edge-triggered intake, level-triggered passes: each loop reads its watch and decides from
each event whether a pass is wanted; the pass itself re-reads the store. Policy:
- A wanted pass runs once the watch has caught up with the commits already made, so a
  burst of commits costs one pass, not one each (also the commits made during a pass and
  its rest); under a steady stream, a pass after at most LOOP_MAX_DEFER seconds of reading.
- After a pass the loop rests as long as the pass took (at most LOOP_MAX_REST), reading
  nothing meanwhile: a loop whose passes grow with the cluster keeps at most about half
  of the event loop, and heartbeats, status reports and the other loops keep theirs. A
  pass that awaits in between (the orchestrator's commits) returns the seconds it held
  the loop, and rests that long. At small sizes a pass takes milliseconds and so does
  the rest. (Unpaced, during a 10,000-task deploy on a thousand simulated nodes the
  orchestrator alone took over a third of the manager's event loop while heartbeats were
  answered late: py-spy, bench/scale.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from pyswarm.manager.config import LOOP_MAX_DEFER, LOOP_MAX_REST
from pyswarm.manager.store import Event, Watch


async def run_passes(watch: Watch, wants_pass: Callable[[Event], bool],
                     run_pass: Callable[[], Awaitable[float | None]]) -> None:
    """Until the watch closes: every event goes to `wants_pass` (True if a pass is wanted
    because of it), and `run_pass` runs as the module's policy says (it returns the
    seconds it held the event loop, or None for all of its time)."""
    wanted = False
    last = time.monotonic()
    async for item in watch:
        if isinstance(item, Event):
            wanted = wants_pass(item) or wanted
            continue
        if not wanted or (watch.pending() and time.monotonic() - last < LOOP_MAX_DEFER):
            continue
        wanted = False
        started = time.monotonic()
        busy = await run_pass()
        took = busy if busy is not None else time.monotonic() - started
        await asyncio.sleep(min(took, LOOP_MAX_REST))
        # The defer window counts from here: what was committed during the pass and the
        # rest is one backlog, read before the next pass (counted from before the rest,
        # the next commit's marker started a pass at once: a pass per backlogged commit).
        last = time.monotonic()
