"""Start and stop a real MergeLab server in a test process, robust to a loaded 2-core machine.

Two gradio behaviours made whole modules error under load (seen in a full-suite run beside a pip install):
- `launch` checks the new server with one HEAD request that may take at most 3 s; a slow first reply makes it
  refuse with "localhost is not accessible" although the server is up. We retry the launch (a few times, after
  closing what the failed one started).
- `close` sets an asyncio.Event from the test's thread while the server's event loop may be iterating its waiters
  ("deque mutated during iteration"), and then skips closing the server. We finish the shutdown ourselves.
"""

from __future__ import annotations

import time
from typing import Any

LAUNCH_ATTEMPTS = 3
NOT_ACCESSIBLE = "localhost is not accessible"


def launch_local(demo: Any, **launch_kwargs: Any) -> str:
    """Launch `demo` on 127.0.0.1 at a free port without blocking; its URL."""
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        try:
            _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                                    **launch_kwargs)
            return url
        except ValueError as error:
            if NOT_ACCESSIBLE not in str(error) or attempt == LAUNCH_ATTEMPTS:
                raise
            close_app(demo)
            time.sleep(2.0 * attempt)
    raise AssertionError("unreachable")


def close_app(demo: Any) -> None:
    """Close `demo` and free its port, even where gradio's close trips over its own event loop."""
    try:
        demo.close()
    except RuntimeError:
        server = getattr(demo, "server", None)
        if server is not None:
            server.close()
        demo.is_running = False
        demo.app.startup_events_triggered = False
