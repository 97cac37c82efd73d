"""mux.py - a thread-safe multiplexing MessagePack-RPC client for demux.

In the spirit of the original Mux/DeMux recipe: any number of threads call
``Mux(uri).transaction(method, *params)`` at once over ONE connection; each
call gets its own msgid and waits for its own answer. Needs only Debian's
python3-msgpack.

    from mux import Mux, RemoteError
    m = Mux("unix:/run/demux.sock")          # or "tcp:127.0.0.1:7411"
    m.transaction("echo.echo", 1, "two")     # -> [1, 'two']
    try:
        m.transaction("sleep.sleep", -5)
    except RemoteError as e:
        print(e.code, e.message, e.trace)
    m.notify("kv.set", "k", 1)               # no answer
    m.close()                                # waiting threads get ClosedError
"""
import itertools
import os
import random
import socket
import subprocess
import threading

import msgpack

__all__ = ["Mux", "MuxError", "RemoteError", "ClosedError",
           "ConnectionLost", "Timeout", "Draining"]


class MuxError(Exception):
    """Base of every error this module raises."""


class RemoteError(MuxError):
    """The server answered with an error: code, message and maybe a trace."""

    def __init__(self, code, message, trace=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.trace = trace


class ClosedError(MuxError):
    """close() was called (the recipe's EOF error)."""


class ConnectionLost(MuxError):
    """The connection broke; the effect of calls in flight is unknown."""


class Draining(MuxError):
    """The server sent $/drain: the call was not sent; retry elsewhere."""


class Timeout(MuxError):
    """No answer in time; the call may still run on the server."""


def _connect(uri):
    if uri.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uri[5:])
        return s
    if uri.startswith("tcp:"):
        hp = uri[4:]
        if hp.startswith("["):
            host, _, port = hp[1:].partition("]:")
        else:
            host, _, port = hp.rpartition(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    raise ValueError("address must be unix:PATH or tcp:HOST:PORT: %r" % uri)


class _Pending:
    __slots__ = ("event", "result", "error")

    def __init__(self):
        self.event = threading.Event()
        self.result = None
        self.error = None


class Mux:
    """One connection shared by any number of threads."""

    def __init__(self, uri=None, _files=None):
        if _files is not None:
            self._rfile, self._wfile, self._proc = _files
            self._sock = None
        else:
            self._sock = _connect(uri)
            self._rfile = self._wfile = None
            self._proc = None
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._pending = {}
        self._ids = itertools.count(random.getrandbits(32))
        self._closed = None            # the error later calls raise
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    @classmethod
    def spawn(cls, argv):
        """Run argv (e.g. ["demuxd", "--stdio", "-c", "demux.yaml"]) as a
        child speaking on its stdin/stdout."""
        p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)
        return cls(_files=(p.stdout, p.stdin, p))

    # -- calls ------------------------------------------------------------

    def _next_id(self):
        while True:
            i = next(self._ids) & 0xFFFFFFFF
            if i not in self._pending:
                return i

    def _send(self, data):
        with self._wlock:
            if self._sock is not None:
                self._sock.sendall(data)
            else:
                self._wfile.write(data)
                self._wfile.flush()

    def transaction(self, method, *params, timeout=None):
        """Call method with params and return its result. Raises
        RemoteError, Timeout, ConnectionLost or ClosedError."""
        p = _Pending()
        with self._lock:
            if self._closed is not None:
                raise self._closed
            msgid = self._next_id()
            self._pending[msgid] = p
        try:
            self._send(msgpack.packb([0, msgid, method, list(params)],
                                     use_bin_type=True))
        except OSError as e:
            self._fail_all(ConnectionLost("send: %s; the effect of calls in "
                                          "flight is unknown" % e))
        if not p.event.wait(timeout):
            with self._lock:
                if self._pending.pop(msgid, None) is p:
                    self._drain_done()
                    raise Timeout("no answer to %s within %ss; the call may "
                                  "still run" % (method, timeout))
            p.event.wait()                # answered meanwhile
        if p.error is not None:
            raise p.error
        return p.result

    call = transaction

    def notify(self, method, *params):
        """Send a notification: no answer."""
        with self._lock:
            if self._closed is not None:
                raise self._closed
        try:
            self._send(msgpack.packb([2, method, list(params)],
                                     use_bin_type=True))
        except OSError as e:
            self._fail_all(ConnectionLost("send: %s" % e))
            raise self._closed

    # -- reading ----------------------------------------------------------

    def _read_loop(self):
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        why = ConnectionLost("the server closed the connection; the effect "
                             "of calls in flight is unknown")
        try:
            while True:
                if self._sock is not None:
                    data = self._sock.recv(1 << 16)
                else:
                    data = os.read(self._rfile.fileno(), 1 << 16)
                if not data:
                    break
                u.feed(data)
                for msg in u:
                    self._on_message(msg)
        except (OSError, ValueError, msgpack.UnpackException) as e:
            why = ConnectionLost("connection lost (%s); the effect of calls "
                                 "in flight is unknown" % e)
        self._fail_all(why)

    def _on_message(self, msg):
        if not isinstance(msg, list) or not msg:
            return
        if msg[0] == 2 and len(msg) == 3 and msg[1] == "$/drain":
            # the server is stopping: send nothing new on this connection
            with self._lock:
                if self._closed is None:
                    self._closed = Draining("the server is draining: not "
                                            "sent, safe to retry elsewhere")
                self._drain_done()
            return
        if msg[0] == 1 and len(msg) == 4:
            with self._lock:
                p = self._pending.pop(msg[1], None)
                self._drain_done()
            if p is None:
                return                    # its caller timed out
            err = msg[2]
            if err is None:
                p.result = msg[3]
            elif isinstance(err, list) and len(err) >= 2:
                p.error = RemoteError(err[0], err[1],
                                      err[2] if len(err) > 2 else None)
            else:
                p.error = RemoteError(None, repr(err))
            p.event.set()

    def _drain_done(self):
        # (with _lock held) after $/drain, once nothing is in flight:
        # half-close, so that demuxd, which keeps a drained connection open
        # for requests still on their way, closes at once
        if (isinstance(self._closed, Draining) and not self._pending and
                self._sock is not None):
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _fail_all(self, exc):
        with self._lock:
            if self._closed is None:
                self._closed = exc
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.error = exc
            p.event.set()

    # -- closing ----------------------------------------------------------

    def close(self):
        """Close the connection: every waiting thread raises ClosedError at
        once, and so does every later call."""
        self._fail_all(ClosedError("the connection was closed"))
        with self._lock:
            self._closed = ClosedError("the connection was closed")
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._reader.join()
            self._sock.close()
        else:
            try:
                self._wfile.close()
            except OSError:
                pass
            self._reader.join()
            self._rfile.close()
            if self._proc is not None:
                self._proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
