"""The ASGI ``lifespan`` scope: the app's startup before the worker reports ready, its shutdown
after the drain.

Why "unsupported" is not a failure: Django's and Channels' handlers raise on a scope type they do
not know, which the spec reads as "no lifespan" (uvicorn's ``--lifespan auto`` does the same); only
an explicit ``lifespan.startup.failed``, or a failure after the app took the startup event, stops
the worker.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, Optional

# How long the app's shutdown may take once the drain is over.
SHUTDOWN_TIMEOUT_S = 10.0


class Lifespan:
    """One app's lifespan conversation, as a task beside the server."""

    def __init__(self, app: Callable, state: Dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.inbox: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.answers: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        self.task: Optional["asyncio.Task[None]"] = None
        self.supported = True
        self.error: Optional[BaseException] = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.4"}, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except BaseException as exc:  # noqa: BLE001 - the app's own error, judged by startup()
            self.error = exc
        finally:
            await self.answers.put({"type": "lifespan.ended"})

    async def _send(self, message: Dict[str, Any]) -> None:
        await self.answers.put(message)

    async def startup(self) -> Optional[str]:
        """None when the app started (or has no lifespan); else why its startup failed."""
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self.answers.get()
        kind = answer.get("type")
        if kind == "lifespan.startup.complete":
            return None
        if kind == "lifespan.startup.failed":
            return str(answer.get("message") or "lifespan.startup.failed")
        # The app ended without answering: it raised on the scope (no lifespan), or returned.
        self.supported = False
        return None

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self.answers.get(), SHUTDOWN_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
