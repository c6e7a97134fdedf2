"""The HTTP layer of the OpenAI-compatible backend: a total deadline per request, replies read
with a size cap, and network errors sorted into retry reasons.

`requests`' timeout is per socket operation: a server that sends one byte every few seconds never
trips it, and a reply can take forever. Here every request runs under a `Deadline`; a timer thread
shuts the request's socket down when the deadline passes, whatever the request is doing then
(connecting, sending, waiting for headers, reading the body), so the blocked call fails at once.

    session.mount("http://", DeadlineAdapter())
    with Deadline(10.0) as deadline:
        resp = session.post(url, json=body, stream=True, timeout=(5.0, 10.0))
        body = read_body(resp, deadline, max_bytes=16 * 2**20)  # None if cut off
    deadline.expired  # True if the timer cut the request off

How the socket is found: `DeadlineAdapter` makes urllib3 build its connections from subclasses
that report their socket to the `Deadline` active in the current thread (`requests` does its
network work in the calling thread) when they connect or send a request. The socket itself is
kept, not the connection: http.client lets go of the connection's socket when a reply will close
it (HTTP/1.0), while the reply goes on reading from it. Requests through a SOCKS proxy use
urllib3's own connection classes and keep only the per-read timeout and `read_body`'s check of
the deadline between chunks.
"""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

READ_CHUNK = 64 * 2**10  # bytes read from the socket at a time
_active = threading.local()  # .deadline: the Deadline of the request this thread is making


class Deadline:
    """A context manager: the request made in this thread inside it must end within `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False  # set (once) by the timer if the deadline passed first
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._finished = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        _active.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.expires - time.monotonic()

    def finish(self) -> bool:
        """Stop the clock (the connection may go back to its pool after this); True if the
        deadline had passed first."""
        with self._lock:
            self._finished, self._socket = True, None
        self._timer.cancel()
        if getattr(_active, "deadline", None) is self:
            _active.deadline = None
        return self.expired

    def attach(self, sock: socket.socket | None) -> None:
        """The socket carrying this request (shut at once if the deadline already passed)."""
        if sock is None:
            return
        with self._lock:
            if self._finished:
                return
            self._socket = sock
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            sock = self._socket
        if sock is not None:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Shut the socket down: a recv or send blocked on it in another thread returns at once.
    socket.socket.shutdown, not SSLSocket's override (that one also drops the TLS object, which
    the reading thread still uses)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _report(connection: HTTPConnection) -> None:
    deadline = getattr(_active, "deadline", None)
    if deadline is not None:
        deadline.attach(getattr(connection, "sock", None))


class _ReportingConnection:
    """Mixin for urllib3 connections: tell the thread's Deadline which connection it uses."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _report(self)  # type: ignore[arg-type]  # (shut at once if the deadline passed meanwhile)

    def request(self, *args, **kwargs):
        _report(self)  # type: ignore[arg-type]  # a kept-alive connection does not connect again
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_ReportingConnection, HTTPConnection):
    pass


class _HTTPSConnection(_ReportingConnection, HTTPSConnection):
    pass


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections can be cut off by a `Deadline`."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # HTTP(S) proxies use urllib3's default pools; SOCKS managers bring their own: keep those.
        if manager.pool_classes_by_scheme == urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def read_body(resp: requests.Response, deadline: Deadline, max_bytes: int) -> bytes | None:
    """The whole body of a `stream=True` reply, read in chunks: None if the deadline passed
    first; `ReplyTooLarge` as soon as it is known to exceed `max_bytes` (from Content-Length, or
    once that many bytes came), so a huge reply is never held in memory."""
    declared = resp.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise ReplyTooLarge(f"it announces {int(declared):,} bytes")
    chunks, size = [], 0
    for chunk in resp.iter_content(READ_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ReplyTooLarge("it went on past the limit")
        chunks.append(chunk)
        if deadline.remaining() < 0:  # also where the timer cannot reach (SOCKS proxies)
            return None
    return b"".join(chunks)


class ReplyTooLarge(Exception):
    """A reply longer than the cap; the message says how that was seen."""


# -- errors -----------------------------------------------------------------------------------------

def classify(exc: requests.exceptions.RequestException) -> str:
    """'connect' (server unreachable), 'timeout' (no reply in time) or 'dropped' (cut off)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect"
    if isinstance(exc, requests.exceptions.Timeout) or any(
            isinstance(e, urllib3.exceptions.ReadTimeoutError) for e in error_chain(exc)):
        return "timeout"  # (a read timeout in the body comes as a ConnectionError)
    if isinstance(exc, requests.exceptions.ConnectionError) and never_connected(exc):
        return "connect"
    return "dropped"


def never_connected(exc: BaseException) -> bool:
    """True if the error chain says the TCP connection was never made (refused, DNS, ...)."""
    return any(isinstance(e, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError))
               for e in error_chain(exc))


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it wraps (requests nests urllib3's, which nest the OS error)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [*e.args, getattr(e, "reason", None), e.__cause__, e.__context__]


def describe_network_error(exc: BaseException) -> str:
    """A short cause ("Connection refused", "read timed out") instead of requests' long repr."""
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{type(exc).__name__} (no reply in time)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection closed mid-reply"
    for e in error_chain(exc):
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return "unknown host"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def public_url(url: str) -> str:
    """The URL without user:password@ and without a query string (either may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
