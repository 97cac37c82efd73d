#!/usr/bin/python3
# 175-limits.t - a client that never reads cannot grow demuxd (max_output
# stops reading its requests), and idle_timeout_ms closes connections that
# send nothing (a slowloris costs a descriptor, and only until the timeout).
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
from tap import BUILD, done_testing, ok, rss_kb  # noqa: E402
from tap import track, watchdog  # noqa: E402

watchdog(120)





def main():
    d = tempfile.mkdtemp(prefix="demux-t.")
    conf = os.path.join(d, "demux.yaml")
    with open(conf, "w") as f:
        f.write('listen: "unix:demux.sock"\nworkers: 2\nmax_frame: 1MiB\n'
                "max_inflight: 100000\nmax_output: 1MiB\n"
                "idle_timeout_ms: 300\n"
                "plugins:\n  - name: echo\n    path: %s/plugins/echo.so\n"
                % BUILD)
    srv = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                           stderr=subprocess.PIPE, text=True)
    track(srv)
    for line in srv.stderr:
        if "READY" in line:
            break
    threading.Thread(target=lambda: [None for _ in srv.stderr],
                     daemon=True).start()
    path = os.path.join(d, "demux.sock")
    try:
        # a client that writes 64 KiB echoes and never reads
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        rss0 = rss_kb(srv.pid)
        req = msgpack.packb([0, 1, "echo.echo", [b"z" * 65536]],
                            use_bin_type=True)
        s.setblocking(False)
        sent = 0
        stalled_since = None
        while True:             # until demuxd has stopped reading us
            try:
                sent += s.send(req)
                stalled_since = None
            except (BrokenPipeError, ConnectionResetError):
                # idle_timeout_ms (300) also closes a connection whose
                # answers go unread
                break
            except BlockingIOError:
                if stalled_since is None:
                    stalled_since = time.monotonic()
                elif time.monotonic() - stalled_since > 1.0:
                    break
                time.sleep(0.01)
            if sent > 512 * 1024 * 1024:
                break
        rss1 = rss_kb(srv.pid)
        ok(sent < 256 * 1024 * 1024, "a client that never reads is stopped: "
           "demuxd took %d MB of its requests, then stopped reading"
           % (sent >> 20))
        ok(rss1 - rss0 < 48 * 1024, "...and demuxd's memory stayed bounded "
           "(RSS %d -> %d kB with max_output 1 MiB)" % (rss0, rss1))
        s.close()

        # idle: connect, send nothing
        t0 = time.monotonic()
        i = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        i.connect(path)
        i.settimeout(10)
        got = i.recv(16)
        dt = time.monotonic() - t0
        ok(got == b"" and 0.25 < dt < 3, "idle_timeout_ms 300: an idle "
           "connection is closed (after %.2f s)" % dt)
        i.close()

        # a slowloris drips a frame; it is closed once it goes quiet
        sl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sl.connect(path)
        frame = msgpack.packb([0, 9, "echo.echo", ["drip"]])
        for b in frame[:-1]:
            sl.send(bytes([b]))
            time.sleep(0.02)
        sl.settimeout(10)
        t0 = time.monotonic()
        got = sl.recv(16)
        ok(got == b"" and time.monotonic() - t0 < 3,
           "a dripped frame that stops short is closed when idle")
        sl.close()

        # a connection in use is not idle
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.connect(path)
        unp = msgpack.Unpacker(raw=False)
        alive = True
        for n in range(8):
            u.sendall(msgpack.packb([0, n, "echo.echo", [n]]))
            unp.feed(u.recv(1024))
            alive = alive and [m for m in unp] == [[1, n, None, [n]]]
            time.sleep(0.1)
        ok(alive, "a connection that keeps sending is never closed as idle")
        u.close()
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(30)
    ok(srv.returncode == 0, "demuxd exits 0")
    done_testing()


signal.alarm(120)
main()
