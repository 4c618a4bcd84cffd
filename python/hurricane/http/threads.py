"""--threads: a request handed to a thread of the pool, and its connection taken back by the event
loop when the thread is done. Mixed into ``server.Server``.

Why apart: with one thread (the default) none of this runs; with more, the event loop never waits
for the app, and a thread never touches epoll: it appends the connection and its state to
``_done`` (an atomic deque append) and wakes the loop, which settles it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from hurricane.http.rejections import HTTPError
from hurricane.http.wire import CLOSED, IN_THREAD, READING, ClientGone, Conn


class ThreadHandoff:
    """The --threads side of ``Server``."""

    def _in_thread(
        self, conn: Conn, app: Callable, env: Dict[str, Any], method: str,
        version11: bool, keep_alive: bool, body: Any,
    ) -> None:
        """--threads: run one request off the event loop, then hand the connection back."""
        state = CLOSED
        try:
            state = self._run_app(conn, app, env, method, version11, keep_alive, body)
        except HTTPError as exc:
            state = self._reject(conn, exc.reason)
        except ClientGone:
            pass
        except BaseException:  # noqa: BLE001 - a thread must always hand its connection back
            self._log_app_error(env)
        finally:
            self._done.append((conn, state))  # deque.append is atomic: no lock needed
            self._wake()

    def _take_back(self, app: Callable, epoll: Any, now: float) -> None:
        """Connections a thread is done with: close them, or watch them again."""
        done = self._done
        while done:
            conn, state = done.popleft()
            self._inflight -= 1
            conn.state = IN_THREAD
            self.conns[conn.fd] = conn
            if state is CLOSED:
                self._close(conn, epoll)
                continue
            conn.last = now
            if state is READING and conn.buf:
                state = self._process(conn, app, now)
            self._settle(conn, state, epoll)

    def _resume_in_thread(self, conn: Conn) -> None:
        state = CLOSED
        try:
            state = self._resume(conn)
        except BaseException:  # noqa: BLE001 - a thread must always hand its connection back
            self._log_app_error({})
        finally:
            self._done.append((conn, state))
            self._wake()
