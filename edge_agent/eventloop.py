"""Which asyncio event loop the agent runs on: uvloop where it is installed (Linux), else the stdlib's.

Why: on the 2-core test machine a bare loopback request/response costs ~62 us of CPU on the stdlib
loop and ~34 us on uvloop, and a Modbus plant is hundreds of those a second. Measured on the Modbus
drivers alone (in-process, 10 devices x 100 tags @ 100 ms) uvloop took about a sixth off; on the
whole agent (benchmarks/modbus_plant.py) the gain was within that noisy machine's spread, because
the request path itself was made cheaper at the same time. uvloop is a libuv binding
with wheels for x86_64 and 64-bit ARM; the stdlib loop stays one setting away for a platform without
it or to rule the loop out when chasing a problem: `[agent] event_loop = "asyncio"` in the config, or
EDGE_AGENT_EVENT_LOOP=asyncio in the environment (which wins over the config).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

ENV = "EDGE_AGENT_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


class LoopUnavailable(Exception):
    pass


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """(loop factory for asyncio.Runner, None for the stdlib default; a name for the log line).

    `choice` comes from the config; the environment variable, when set, overrides it. "auto" takes
    uvloop when it imports and the stdlib loop otherwise; "uvloop" insists (LoopUnavailable if absent).
    """
    env = os.environ.get(ENV, "").strip().lower()
    if env:
        if env not in CHOICES:
            raise LoopUnavailable(f"{ENV}={env}: expected one of {', '.join(CHOICES)}")
        choice = env
    if choice == "asyncio":
        return None, "asyncio (stdlib)"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailable("event_loop = \"uvloop\" but uvloop is not installed "
                                  "(pip install uvloop, or set event_loop = \"asyncio\")") from None
        return None, "asyncio (stdlib; uvloop not installed)"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"
