#!/usr/bin/python3
# 310-raw-client.t - demuxd seen by a plain MessagePack-RPC client in another
# language (Debian's python3-msgpack), no libmux: 10,000 pipelined requests on
# one socket, and every kind of malformed input answered as docs/protocol.md
# says, without harming other connections.
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import BUILD, diag, done_testing, ok  # noqa: E402
from tap import track, watchdog  # noqa: E402

watchdog(180)





class Server:
    """A demuxd on a temporary unix socket, stopped by its pid."""

    def __init__(self, extra="", flags=()):
        self.dir = tempfile.mkdtemp(prefix="demux-t.")
        self.sock = os.path.join(self.dir, "demux.sock")
        conf = os.path.join(self.dir, "demux.yaml")
        with open(conf, "w") as f:
            f.write('listen: "unix:demux.sock"\n' +
                    ("" if "workers:" in extra else "workers: 4\n") + extra +
                    "plugins:\n"
                    "  - name: echo\n    path: %s/plugins/echo.so\n"
                    "  - name: sleep\n    path: %s/plugins/sleep.so\n"
                    "  - name: kv\n    path: %s/plugins/kv.so\n"
                    % (BUILD, BUILD, BUILD))
        cmd = [BUILD + "/demuxd", "-c", conf] + list(flags)
        self.log = []
        if os.environ.get("DEMUX_VALGRIND") == "1":
            cmd = ["valgrind", "--quiet", "--leak-check=full",
                   "--show-leak-kinds=definite,indirect",
                   "--errors-for-leak-kinds=definite,indirect",
                   "--error-exitcode=99"] + cmd
        self.proc = subprocess.Popen(cmd,
                                     stderr=subprocess.PIPE, text=True)
        track(self.proc)
        for line in self.proc.stderr:           # wait for READY, no sleep
            if "READY" in line:
                break
        else:
            raise RuntimeError("demuxd did not start")
        # keep draining its log so it never blocks on a full pipe; show
        # warnings, errors and valgrind's findings as TAP comments
        self.log_thread = threading.Thread(target=self._forward, daemon=True)
        self.log_thread.start()

    def _forward(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if " warn: " in line or " error: " in line or "==" in line:
                sys.stderr.write("# demuxd: " + line)

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.sock)
        return s

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def read_messages(s, want, unpacker=None):
    """Read until `want` messages arrived or the peer closed."""
    u = unpacker or msgpack.Unpacker(raw=False, strict_map_key=False)
    got = []
    while len(got) < want:
        data = s.recv(1 << 20)
        if not data:
            break
        u.feed(data)
        got.extend(u)
    return got


def send_in_background(s, data):
    """Pipeline: write everything from another thread while the caller
    reads answers. A client that writes without reading would deadlock
    against back pressure (max_inflight), as it must."""
    t = threading.Thread(target=s.sendall, args=(data,), daemon=True)
    t.start()
    return t


def read_until_eof(s):
    u = msgpack.Unpacker(raw=False, strict_map_key=False)
    got = []
    while True:
        data = s.recv(1 << 20)
        if not data:
            return got
        u.feed(data)
        got.extend(u)


def pipelined(srv):
    s = srv.connect()
    n = 10000
    buf = bytearray()
    for i in range(n):
        if i % 10 == 9:
            buf += msgpack.packb([0, i, "sleep.sleep", [0]])
        else:
            buf += msgpack.packb([0, i, "echo.echo", [i, "x" * (i % 97)]])
    t0 = time.monotonic()
    w = send_in_background(s, bytes(buf))
    got = read_messages(s, n)
    w.join()
    dt = time.monotonic() - t0
    ok(len(got) == n, "10,000 pipelined requests on one socket: %d answers"
       % len(got))
    byid = {}
    bad = 0
    for m in got:
        if m[0] != 1 or m[2] is not None:
            bad += 1
            continue
        byid[m[1]] = m[3]
    for i in range(n):
        want = 0 if i % 10 == 9 else [i, "x" * (i % 97)]
        if byid.get(i) != want:
            bad += 1
    ok(bad == 0 and len(byid) == n,
       "each answer carries its request's msgid and result (%d bad)" % bad)
    diag("%d round trips pipelined in %.0f ms" % (n, dt * 1000))
    s.close()


def malformed(srv):
    s = srv.connect()
    cases = [
        (7, None, -32600, "a lone integer"),
        ([0, "x", "echo.echo", []], None, -32600, "a string msgid"),
        ([0, 2 ** 32, "echo.echo", []], None, -32600, "msgid beyond uint32"),
        ([0, 5, 7, []], 5, -32600, "a method that is not a string"),
        ([0, 6, "echo.echo", 3], 6, -32600, "params that are not an array"),
        ([0, 7, "no.such", []], 7, -32601, "an unknown method"),
        ([9, 1, "m", []], None, -32600, "an unknown message type"),
        ([1, 2, None, None], None, -32600, "a response sent to the server"),
        ([0, 8, "echo.echo"], 8, -32600, "a request with 3 elements"),
        ([0, 13], 13, -32600, "a request with only a msgid"),
        ([0], None, -32600, "a request without msgid"),
        ([], None, -32600, "an empty array"),
        ({"a": 1}, None, -32600, "a map"),
        ([0, 9, "sleep.sleep", ["x"]], 9, -32602, "bad params for a handler"),
    ]
    for msg, msgid, code, what in cases:
        s.sendall(msgpack.packb(msg))
        got = read_messages(s, 1)
        m = got[0] if got else None
        if msgid is None:
            ok(m is not None and m[0] == 2 and m[1] == "$/error" and
               m[2][0] == code,
               "%s: notification $/error [%d, ...] (got %r)" % (what, code, m))
        else:
            ok(m is not None and m[0] == 1 and m[1] == msgid and
               m[2][0] == code and m[3] is None,
               "%s: answered with msgid %d and %d (got %r)"
               % (what, msgid, code, m))
    s.sendall(msgpack.packb([0, 10, "$/ping", []]))
    m = read_messages(s, 1)
    ok(m and m[0] == [1, 10, None, "pong"],
       "the connection goes on after bad but well-framed messages")

    # a notification gets no answer, even when it is wrong
    s.sendall(msgpack.packb([2, "no.such", []]) +
              msgpack.packb([2, "echo.echo", [1]]) +
              msgpack.packb([0, 11, "$/ping", []]))
    m = read_messages(s, 1)
    ok(m and m[0] == [1, 11, None, "pong"],
       "notifications are executed or dropped, never answered")

    # not msgpack at all: parse error notification, then the server closes
    s.sendall(msgpack.packb([0, 12, "sleep.sleep", [200]]) + b"\xc1garbage")
    got = read_until_eof(s)
    ok(any(m[0] == 2 and m[1] == "$/error" and m[2][0] == -32700 for m in got),
       "bytes that are not msgpack: $/error [-32700, ...], then EOF")
    ok(any(m[0] == 1 and m[1] == 12 and m[3] == 200 for m in got),
       "...the request accepted before them is still answered")
    s.close()


def too_large(srv):
    s = srv.connect()
    big = msgpack.packb([0, 77, "echo.echo", ["y" * 300000]])
    try:
        s.sendall(big)
    except OSError:
        pass                     # the server may close before we finish
    got = read_until_eof(s)
    ok(any(m[0] == 1 and m[1] == 77 and m[2] and m[2][0] == -32013
           for m in got),
       "a frame over max_frame is answered -32013 with its msgid (%r)"
       % [m[:3] for m in got])
    s.close()
    s = srv.connect()
    s.sendall(b"\xdb\xff\xff\xff\xff")   # a 4 GiB string header alone
    got = read_until_eof(s)
    ok(any(m[0] == 2 and m[2][0] == -32013 for m in got),
       "a 4 GiB header without msgid: $/error -32013 before any payload")
    s.close()


def truncated(srv):
    s = srv.connect()
    s.sendall(msgpack.packb([0, 1, "echo.echo", ["abc"]])[:-2])
    s.shutdown(socket.SHUT_WR)
    got = read_until_eof(s)
    ok(got == [], "a truncated frame then EOF: no answer, clean close")
    s.close()


def back_pressure():
    srv = Server("max_inflight: 4\n")
    try:
        s = srv.connect()
        n = 2000
        w = send_in_background(s, b"".join(
            msgpack.packb([0, i, "echo.echo", [i]]) for i in range(n)))
        got = read_messages(s, n)
        w.join()
        ok(len(got) == n and sorted(m[1] for m in got) == list(range(n)) and
           all(m[2] is None for m in got),
           "max_inflight 4: 2000 pipelined requests all answered "
           "(back pressure, not errors)")
        s.close()
    finally:
        ok(srv.stop() == 0, "that server stops cleanly")


def graceful_stop():
    srv = Server(flags=("-v",))
    s = srv.connect()
    # 8 slow requests, then a ping: the ping's answer proves all 8 were read
    # and handed to workers (one stream, read in order)
    s.sendall(b"".join(msgpack.packb([0, i, "sleep.sleep", [300]])
                       for i in range(8)) +
              msgpack.packb([0, 99, "$/ping", []]))
    first = read_messages(s, 1)
    ok(first == [[1, 99, None, "pong"]], "8 slow requests in flight")
    srv.proc.send_signal(signal.SIGTERM)
    u = msgpack.Unpacker(raw=False)
    got = []
    while [2, "$/drain", []] not in got:
        u.feed(s.recv(65536))
        got.extend(u)
    ok([2, "$/drain", []] in got,
       "SIGTERM: the client is sent the notification $/drain")
    s.sendall(msgpack.packb([0, 50, "echo.echo", [1]]))
    want = set(range(8)) | {50}
    while want - {m[1] for m in got if m[0] == 1}:
        got += read_messages(s, 1)
    resp = [m for m in got if m[0] == 1]
    ok(sorted(m[1] for m in resp if m[1] < 8) == list(range(8)) and
       all(m[2] is None and m[3] == 300 for m in resp if m[1] < 8),
       "every request in flight is still answered")
    late = [m for m in resp if m[1] == 50]
    ok(late and late[0][2][0] == -32012 and
       late[0][2][1].startswith("shutting down: not executed"),
       "a request sent after $/drain is answered -32012 'not executed' (%r)"
       % late)
    # nothing in flight now: the connection lingers for requests that were
    # on their way when $/drain left, instead of dropping them unanswered
    s.sendall(msgpack.packb([0, 51, "echo.echo", [1]]))
    idle = read_messages(s, 1)
    ok(idle and idle[0][1] == 51 and idle[0][2][0] == -32012 and
       idle[0][2][1].startswith("shutting down: not executed"),
       "...also once idle: answered, not lost to the close (%r)" % idle)
    s.shutdown(socket.SHUT_WR)
    ok(read_until_eof(s) == [],
       "the client half-closes: demuxd closes too, nothing more sent")
    rc = srv.proc.wait(60)
    ok(rc == 0, "demuxd exits 0 after answering them")
    ok(not os.path.exists(srv.sock), "the socket file is removed")
    srv.log_thread.join(30)      # ends at the log's EOF
    ok(any("<kv> fini" in line for line in srv.log),
       "plugins' fini ran (kv logged it)")


def drain_timeout():
    srv = Server("workers: 1\ndrain_timeout_ms: 300\n")
    s = srv.connect()
    # one running, one queued behind it (1 worker); the ping proves both
    # were read and dispatched
    s.sendall(msgpack.packb([0, 1, "sleep.sleep", [3000]]) +
              msgpack.packb([0, 2, "sleep.sleep", [3000]]) +
              msgpack.packb([0, 3, "$/ping", []]))
    ok(read_messages(s, 1) == [[1, 3, None, "pong"]], "two slow requests in "
       "flight (one running, one queued)")
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    got = read_until_eof(s)
    dt = time.monotonic() - t0
    r = {m[1]: m for m in got if m[0] == 1}
    ok(1 in r and r[1][2][0] == -32012 and "still running" in r[1][2][1],
       "drain_timeout_ms passed: the running request is answered -32012 "
       "(%r)" % (r.get(1),))
    ok(2 in r and r[2][2][0] == -32012 and "not executed" in r[2][2][1],
       "...and the queued one too, as not executed (%r)" % (r.get(2),))
    ok(dt < 2.0, "...after the 300 ms drain timeout, not the 3 s handlers "
       "(%.2f s)" % dt)
    rc = srv.proc.wait(10)
    ok(rc == 0 and time.monotonic() - t0 < 2.5,
       "demuxd exits 0 without waiting for the stuck handler")


def main():
    srv = Server("max_frame: 64KiB\n")
    try:
        pipelined(srv)
        malformed(srv)
        too_large(srv)
        truncated(srv)
        s = srv.connect()
        s.sendall(msgpack.packb([0, 1, "$/ping", []]))
        ok(read_messages(s, 1) == [[1, 1, None, "pong"]],
           "after all that abuse, a new connection is served normally")
        s.close()
    finally:
        rc = srv.stop()
    ok(rc == 0, "demuxd exits 0 on SIGTERM")
    back_pressure()
    graceful_stop()
    drain_timeout()
    done_testing()


signal.alarm(1200 if os.environ.get("DEMUX_VALGRIND") == "1" else 120)
main()
