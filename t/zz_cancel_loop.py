#!/usr/bin/python3
# 177-liveness.t - what one client (or the operating system) can do to stall
# demuxd, each found by an audit, each bounded now:
#  - out of descriptors (RLIMIT_NOFILE below max_connections): accept4 fails
#    with EMFILE; the listener must not spin nor flood the log;
#  - connections closed by their clients go at once, even with deadlines
#    pending (they used to stay, descriptor and buffers, until those fired);
#  - a storm of $/cancelRequest costs O(1) each, not a walk of everything
#    in flight, so another client's $/ping is not held up;
#  - TCP connections get keepalive probes, so a vanished peer is found.
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tap import (BUILD, done_testing, ok, start_demuxd,  # noqa: E402
                 stop_demuxd, watchdog)

watchdog(290)
log_lines = []


def start(extra, nofile=None):
    if "listen:" not in extra:
        extra = 'listen: [ "unix:demux.sock" ]\n' + extra

    def limit():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    del log_lines[:]
    p, d = start_demuxd("%s\nplugins:\n"
                        "  - name: echo\n    path: %s/plugins/echo.so\n"
                        "    timeout_ms: 60000\n"
                        "  - name: sleep\n    path: %s/plugins/sleep.so\n"
                        % (extra, BUILD, BUILD), log=log_lines,
                        preexec_fn=limit)
    return p, os.path.join(d, "demux.sock"), d


stop = stop_demuxd


import traceback


def dump(p, path):
    st = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    st.settimeout(5)
    st.connect(path)
    r = call(st, msgpack.Unpacker(raw=False), 1, "$/stats", [])
    print("# STATS", r[3]["server"], r[3]["pool"], r[3]["methods"]["sleep.sleep"], flush=True)
    os.system("gdb -p %d -batch -ex 'thread apply all bt 10' 2>/dev/null | grep -E '^#|^Thread' | head -80" % p.pid)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def read_one(s, u):
    while True:
        for m in u:
            return m
        data = s.recv(1 << 16)
        if not data:
            return None
        u.feed(data)


def call(s, u, msgid, method, params):
    s.sendall(msgpack.packb([0, msgid, method, params]))
    return read_one(s, u)


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


for _rep in range(30):
    try:
        # ---- a cancel storm ----
        p, path, d = start("workers: 1\ndrain_timeout_ms: 500")
        s = connect(path)
        s.settimeout(15)
        u = msgpack.Unpacker(raw=False)
        N = 4000
        s.sendall(b"".join(msgpack.packb([0, i, "sleep.sleep", [100000]])
                           for i in range(N)))
        ping = connect(path)
        pu = msgpack.Unpacker(raw=False)
        call(ping, pu, 1, "$/ping", [])
        storm = b"".join(msgpack.packb([2, "$/cancelRequest", [N + i]])
                         for i in range(400000))
        worst = [0.0]
        stop_ping = threading.Event()
    
    
        def pinger():
            k = 2
            while not stop_ping.is_set():
                t = time.monotonic()
                call(ping, pu, k, "$/ping", [])
                worst[0] = max(worst[0], time.monotonic() - t)
                k += 1
    
    
        th = threading.Thread(target=pinger)
        th.start()
        t0 = time.monotonic()
        s.sendall(storm)
        # the storm is read when $/stats counts it
        while True:
            st = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            st.connect(path)
            r = call(st, msgpack.Unpacker(raw=False), 1, "$/stats", [])
            st.close()
            if r[3]["server"]["requests"] >= N + 400000:
                break
        took = time.monotonic() - t0
        stop_ping.set()
        th.join()
        ok(took < 5, "400,000 cancels with %d calls in flight are read in %.2f s "
           "(8.2 s of I/O thread before)" % (N, took))
        ok(worst[0] < 1.0, "another client's $/ping meanwhile waited at most "
           "%.3f s" % worst[0])
        # cancel what is in flight: queued ones are answered -32800 at once
        s.sendall(b"".join(msgpack.packb([2, "$/cancelRequest", [i]])
                           for i in range(N)))
        answered = 0
        while answered < N:
            m = read_one(s, u)
            if m is None:
                break
            answered += 1
        ok(answered == N, "cancelling the %d in flight answers each (%d)" %
           (N, answered))
        s.close()
        ping.close()
        ok(stop(p, d) == 0, "demuxd stops cleanly")
    
    except Exception:
        traceback.print_exc(file=sys.stdout)
        dump(p, path)
        os._exit(1)
done_testing()
