#!/usr/bin/python3
# 330-python-client.t - clients/python/mux.py against a real demuxd: many
# threads on one connection, remote errors with code/message/trace,
# notifications, timeouts, close() and a dying server, and spawn mode.
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from mux import (Mux, RemoteError, ClosedError, ConnectionLost,  # noqa: E402
                 Timeout)
sys.path.insert(0, HERE)
from tap import BUILD, done_testing, ok  # noqa: E402
from tap import track, watchdog  # noqa: E402

watchdog(120)




def start_server():
    d = tempfile.mkdtemp(prefix="demux-t.")
    conf = os.path.join(d, "demux.yaml")
    with open(conf, "w") as f:
        f.write('listen: "unix:demux.sock"\nworkers: 16\nplugins:\n'
                "  - name: echo\n    path: %s/plugins/echo.so\n"
                "  - name: sleep\n    path: %s/plugins/sleep.so\n"
                "  - name: kv\n    path: %s/plugins/kv.so\n"
                % (BUILD, BUILD, BUILD))
    p = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                         stderr=subprocess.PIPE, text=True)
    track(p)
    for line in p.stderr:
        if "READY" in line:
            break
    threading.Thread(target=lambda: [None for _ in p.stderr],
                     daemon=True).start()
    return p, "unix:" + os.path.join(d, "demux.sock"), conf


def main():
    srv, uri, conf = start_server()
    try:
        m = Mux(uri)
        ok(m.transaction("$/ping") == "pong", "transaction $/ping -> pong")
        ok(m.transaction("echo.echo", 1, "two", {"k": [3]}) ==
           [1, "two", {"k": [3]}], "echo.echo returns its params")

        bad = []

        def worker(tid):
            for i in range(200):
                payload = "%d-%d-%s" % (tid, i, "x" * (i % 50))
                if m.transaction("echo.echo", tid, i, payload) != \
                        [tid, i, payload]:
                    bad.append((tid, i))
        ts = [threading.Thread(target=worker, args=(t,)) for t in range(32)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        ok(not bad, "32 threads x 200 calls on one connection, each gets its "
           "own answer")

        try:
            m.transaction("sleep.sleep", -5)
            ok(False, "a handler error raises")
        except RemoteError as e:
            ok(e.code == 1 and "-5" in e.message and e.trace and
               "sleep.so" in e.trace,
               "RemoteError carries code %r, message %r and a trace"
               % (e.code, e.message))
        try:
            m.transaction("no.such")
            ok(False, "unknown method raises")
        except RemoteError as e:
            ok(e.code == -32601, "unknown method: RemoteError -32601")

        m.notify("kv.set", "n", 42)
        seen = False
        for _ in range(10000):
            if m.transaction("kv.get", "n") == 42:
                seen = True
                break
        ok(seen, "notify: the notification took effect, without an answer")

        t0 = time.monotonic()
        try:
            m.transaction("sleep.sleep", 600, timeout=0.1)
            ok(False, "a slow call times out")
        except Timeout:
            ok(time.monotonic() - t0 < 0.5, "timeout: Timeout after 0.1 s")
        ok(m.transaction("$/ping") == "pong", "...and the connection goes on")

        errs = []

        def waiter():
            try:
                m.transaction("sleep.sleep", 5000)
                errs.append("returned")
            except ClosedError:
                errs.append("closed")
            except Exception as e:      # noqa: BLE001
                errs.append(repr(e))
        ws = [threading.Thread(target=waiter) for _ in range(8)]
        [w.start() for w in ws]
        # a ping sent after them proves their requests were sent first
        while len(m._pending) < 8:
            time.sleep(0.001)
        t0 = time.monotonic()
        m.close()
        [w.join() for w in ws]
        ok(errs == ["closed"] * 8 and time.monotonic() - t0 < 2,
           "close() wakes every waiting thread with ClosedError (%r)" % errs)
        try:
            m.transaction("$/ping")
            ok(False, "calls after close raise")
        except ClosedError:
            ok(True, "calls after close() raise ClosedError")

        m = Mux(uri)
        errs = []

        def waiter2():
            try:
                m.transaction("sleep.sleep", 5000)
            except ConnectionLost:
                errs.append("lost")
        ws = [threading.Thread(target=waiter2) for _ in range(4)]
        [w.start() for w in ws]
        while len(m._pending) < 4:
            time.sleep(0.001)
        srv.kill()
        srv.wait()
        [w.join() for w in ws]
        ok(errs == ["lost"] * 4, "server killed: waiting threads raise "
           "ConnectionLost")
        m.close()

        s = Mux.spawn([BUILD + "/demuxd", "--stdio", "-q", "-c", conf])
        ok(s.transaction("echo.echo", "via", "pipes") == ["via", "pipes"],
           "Mux.spawn talks to demuxd --stdio over a pipe pair")
        s.close()
        ok(s._proc.returncode == 0, "the child exits 0 on close()")
    finally:
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
            srv.wait()
    done_testing()


signal.alarm(120)
main()
