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
    c = m.submit("sleep.sleep", 5000)        # a Call in flight...
    c.cancel()                               # ...cancelled ($/cancelRequest)
    m.close()                                # waiting threads get ClosedError

Over TLS, with a token (see docs/security.md):

    ctx = ssl.create_default_context(cafile="ca.crt")
    ctx.load_cert_chain("client.crt", "client.key")   # if the server asks
    m = Mux("tls:db1.example:7412", ssl_context=ctx, auth=("ci", secret))
"""
import itertools
import os
import random
import select
import socket
import ssl
import subprocess
import threading
import time
import traceback

import msgpack

__all__ = ["Mux", "Call", "MuxError", "RemoteError", "ClosedError",
           "ConnectError", "ConnectionLost", "ProtocolError", "Timeout",
           "Cancelled", "Draining"]


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


class ConnectError(MuxError):
    """The connection could not be made; names the address and why. The
    OSError (or ssl.SSLError) behind it is its __cause__ and .error."""

    def __init__(self, uri, error):
        super().__init__("cannot connect to %s: %s" % (uri, getattr(
            error, "strerror", None) or getattr(error, "verify_message",
            None) or error))
        self.uri = uri
        self.error = error


class Cancelled(MuxError):
    """Call.cancel() was called: $/cancelRequest went to the server. A call
    that had not started there never runs; one running may finish anyway."""


class ConnectionLost(MuxError):
    """The connection broke; the effect of calls in flight is unknown."""


class ProtocolError(ConnectionLost):
    """The server sent what is not MessagePack-RPC (garbage, or a response
    whose msgid is not an integer): the connection is dropped, since no
    answer on it can be trusted to reach the right caller."""


class Draining(MuxError):
    """The server sent $/drain: the call was not sent; retry elsewhere."""


class Timeout(MuxError):
    """No answer in time. transaction() then sends $/cancelRequest: a call
    not yet started on the server never runs; one running may finish."""


def _host_port(hp):
    if hp.startswith("["):
        host, _, port = hp[1:].partition("]:")
    else:
        host, _, port = hp.rpartition(":")
    return host, int(port)


def _connect(uri, ssl_context=None):
    if uri.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uri[5:])
        return s
    if uri.startswith("tcp:") or uri.startswith("tls:"):
        host, port = _host_port(uri[4:])
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if uri.startswith("tcp:"):
            return s
        # the handshake runs blocking, here; the socket turns non-blocking
        # after it. The default context verifies the certificate and the
        # host name against the system's CAs.
        ctx = ssl_context or ssl.create_default_context()
        try:
            return ctx.wrap_socket(s, server_hostname=host)
        except BaseException:
            s.close()
            raise
    raise ValueError("address must be unix:PATH, tcp:HOST:PORT or "
                     "tls:HOST:PORT: %r" % uri)


class Call:
    """A call in flight, from Mux.submit(): wait() for its answer, or
    cancel() it. Any thread may wait; cancel may come from any thread."""
    __slots__ = ("event", "result", "error", "_mux", "msgid", "method")

    def __init__(self, mux, msgid, method):
        self.event = threading.Event()
        self.result = None
        self.error = None
        self._mux = mux
        self.msgid = msgid
        self.method = method

    def done(self):
        """True once answered, failed or cancelled."""
        return self.event.is_set()

    def wait(self, timeout=None):
        """The result; raises RemoteError, ConnectionLost, Cancelled, or
        Timeout after timeout seconds (the call stays in flight: wait
        again, or cancel it)."""
        if not self.event.wait(timeout):
            raise Timeout("no answer to %s within %ss" % (self.method,
                                                          timeout))
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self):
        """Stop waiting and tell the server ($/cancelRequest): waiters
        raise Cancelled. False if the call had already ended."""
        return self._mux._cancel(self, Cancelled(
            "%s was cancelled: if it had not started it never runs" %
            self.method))


class Mux:
    """One connection shared by any number of threads."""

    def __init__(self, uri=None, ssl_context=None, auth=None, _files=None,
                 on_notify=None):
        """Connect to uri: "unix:PATH", "tcp:HOST:PORT" or "tls:HOST:PORT"
        (ssl_context: an ssl.SSLContext for tls:, by default one that
        verifies against the system's CAs). auth=(name, secret) sends
        $/auth before anything else; a refusal raises RemoteError
        (-32015) and closes the connection.

        on_notify(method, params) is called for every notification the
        server sends other than the "$/" ones handled here (a plugin
        talking back: pubsub.message, timer.progress), on the reader
        thread, in the order they arrived and before any later answer is
        delivered; it must not block. An exception it raises is printed
        to stderr and the connection goes on."""
        self._on_notify = on_notify
        if _files is not None:
            self._rfile, self._wfile, self._proc = _files
            self._sock = None
        else:
            try:
                self._sock = _connect(uri, ssl_context)
            except (OSError, ssl.SSLError) as e:
                raise ConnectError(uri, e) from e
            self._rfile = self._wfile = None
            self._proc = None
        # OpenSSL's SSL object is not safe for a read and a write at once:
        # the reader and the writers take turns on it (each turn is short,
        # the socket being non-blocking)
        self._tls = isinstance(self._sock, ssl.SSLSocket)
        self._tlock = threading.Lock()
        # writes never block: a server that does not read must not hold a
        # caller past its timeout (the reader waits in select)
        if self._sock is not None:
            self._sock.setblocking(False)
            self._wfd = self._rfd = self._sock.fileno()
        else:
            self._wfd = self._wfile.fileno()
            self._rfd = self._rfile.fileno()
            os.set_blocking(self._wfd, False)
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._pending = {}
        self._ids = itertools.count(random.getrandbits(32))
        self._closed = None            # the error later calls raise
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        if auth is not None:
            try:
                self.transaction("$/auth", auth[0], auth[1])
            except BaseException:
                self.close()
                raise

    @classmethod
    def spawn(cls, argv, on_notify=None):
        """Run argv (e.g. ["demuxd", "--stdio", "-c", "demux.yaml"]) as a
        child speaking on its stdin/stdout."""
        p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)
        return cls(_files=(p.stdout, p.stdin, p), on_notify=on_notify)

    # -- calls ------------------------------------------------------------

    def _next_id(self):
        while True:
            i = next(self._ids) & 0xFFFFFFFF
            if i not in self._pending:
                return i

    def _send(self, data, deadline=None):
        """Write data whole, by the deadline (time.monotonic(), or None).
        Raises Timeout if nothing could be written in time; a frame cut off
        half-way corrupts the stream, so that drops the connection."""
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._wlock.acquire(timeout=-1 if left is None else left):
            raise Timeout("the connection stayed busy: not sent")
        try:
            view, sent = memoryview(data), 0
            while sent < len(view):
                try:
                    if self._tls:
                        with self._tlock:
                            n = self._sock.send(view[sent:])
                    elif self._sock is not None:
                        n = self._sock.send(view[sent:])
                    else:
                        n = os.write(self._wfd, view[sent:])
                    sent += n
                    continue
                except ssl.SSLWantReadError:
                    # TLS wants the peer's bytes first (a key update): the
                    # reader takes them; try again in a moment
                    select.select([self._wfd], [], [], 0.01)
                except (BlockingIOError, InterruptedError,
                        ssl.SSLWantWriteError):
                    pass
                left = (None if deadline is None else
                        deadline - time.monotonic())
                if left is not None and left <= 0:
                    if sent == 0:
                        raise Timeout("the server is not reading: not sent")
                    err = ConnectionLost("the server stopped reading in the "
                                         "middle of a request; the effect "
                                         "of calls in flight is unknown")
                    self._fail_all(err)
                    self._shutdown()
                    raise Timeout("the server is not reading: the request "
                                  "was cut off, and the connection dropped")
                select.select([], [self._wfd], [], left)
        finally:
            self._wlock.release()

    def _shutdown(self, how=socket.SHUT_RDWR):
        # socket.socket.shutdown, not SSLSocket's: that one also drops the
        # SSL object, and the reader would then read ciphertext as data
        if self._sock is not None:
            try:
                socket.socket.shutdown(self._sock, how)
            except OSError:
                pass

    def submit(self, method, *params, timeout=None):
        """Send a call and return its Call at once, to wait() for or
        cancel(). timeout bounds the sending only (Timeout: not sent)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._start(method, params, deadline)

    def _start(self, method, params, deadline):
        with self._lock:
            if self._closed is not None:
                raise self._closed
            c = Call(self, self._next_id(), method)
            self._pending[c.msgid] = c
        try:
            self._send(msgpack.packb([0, c.msgid, method, list(params)],
                                     use_bin_type=True), deadline)
        except Timeout:
            with self._lock:
                self._pending.pop(c.msgid, None)
            raise
        except OSError as e:
            self._fail_all(ConnectionLost("send: %s; the effect of calls in "
                                          "flight is unknown" % e))
        return c

    def transaction(self, method, *params, timeout=None):
        """Call method with params and return its result. Raises
        RemoteError, Timeout (after sending $/cancelRequest),
        ConnectionLost or ClosedError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        c = self._start(method, params, deadline)
        if not c.event.wait(None if deadline is None else
                            max(0.0, deadline - time.monotonic())):
            if self._cancel(c, None):
                raise Timeout("no answer to %s within %ss; $/cancelRequest "
                              "sent: it never runs if it had not started, "
                              "a running handler may still finish" %
                              (method, timeout))
            c.event.wait()                # answered meanwhile
        if c.error is not None:
            raise c.error
        return c.result

    def _cancel(self, c, error):
        """End c with error (None: leave it to the caller) and send
        $/cancelRequest; False if it had ended already."""
        with self._lock:
            if self._pending.pop(c.msgid, None) is not c:
                return False
            self._drain_done()
            closed = self._closed is not None
        if not closed:
            try:
                self._send(msgpack.packb([2, "$/cancelRequest", [c.msgid]],
                                         use_bin_type=True),
                           time.monotonic() + 1.0)
            except (OSError, MuxError):
                pass        # the connection is going: nothing runs on
        if error is not None:
            c.error = error
            c.event.set()
        return True

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
        # a string that is not valid UTF-8 (a server cutting a name inside
        # a character) decodes with surrogate escapes instead of failing
        u = msgpack.Unpacker(raw=False, strict_map_key=False,
                             unicode_errors="surrogateescape")
        why = ConnectionLost("the server closed the connection; the effect "
                             "of calls in flight is unknown")
        try:
            more = False
            while True:
                if not more:
                    select.select([self._rfd], [], [])
                try:
                    if self._tls:
                        data, more = self._tls_recv()
                        if data is None:
                            continue
                    elif self._sock is not None:
                        data = self._sock.recv(1 << 16)
                    else:
                        data = os.read(self._rfd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    break
                u.feed(data)
                for msg in u:
                    self._on_message(msg)
        except ProtocolError as e:
            why = e
        except OSError as e:
            why = ConnectionLost("connection lost (%s); the effect of calls "
                                 "in flight is unknown" % e)
        except (ValueError, msgpack.UnpackException) as e:
            why = ProtocolError("the server sent bytes that are not "
                                "MessagePack (%s %s): dropping the "
                                "connection" % (type(e).__name__, e))
        self._fail_all(why)
        self._shutdown()

    def _tls_recv(self):
        """(data, more): what TLS has decrypted (b"" at the end, None if
        nothing yet), and whether OpenSSL may hold more. Reads until it
        wants bytes from the socket, since a record already taken off the
        socket would not wake select again, but 16 reads at most a turn, so
        that writers get theirs."""
        parts = []
        with self._tlock:
            for _ in range(16):
                try:
                    data = self._sock.recv(1 << 16)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                if not data:
                    return (b"".join(parts) if parts else b""), False
                parts.append(data)
            else:
                return b"".join(parts), True
        return (b"".join(parts) if parts else None), False

    def _on_message(self, msg):
        if (not isinstance(msg, list) or not msg or
                not isinstance(msg[0], int) or isinstance(msg[0], bool)):
            raise ProtocolError("the server sent %.60r, not a MessagePack-RPC "
                                "message: dropping the connection" % (msg,))
        if msg[0] == 1 and (len(msg) != 4 or not isinstance(msg[1], int) or
                            isinstance(msg[1], bool)):
            raise ProtocolError("a response without an integer msgid "
                                "(%.60r): dropping the connection" % (msg,))
        if msg[0] == 2 and len(msg) == 3 and msg[1] == "$/drain":
            # the server is stopping: send nothing new on this connection
            with self._lock:
                if self._closed is None:
                    self._closed = Draining("the server is draining: not "
                                            "sent, safe to retry elsewhere")
                self._drain_done()
            return
        if (msg[0] == 2 and len(msg) == 3 and isinstance(msg[1], str) and
                not msg[1].startswith("$/")):
            if self._on_notify is not None:
                try:
                    self._on_notify(msg[1], msg[2])
                except Exception:
                    traceback.print_exc()
            return
        if msg[0] == 1 and len(msg) == 4:
            with self._lock:
                p = self._pending.pop(msg[1], None)
                self._drain_done()
            if p is None:
                return                    # timed out or cancelled
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
            self._shutdown(socket.SHUT_WR)

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
            self._shutdown()
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
