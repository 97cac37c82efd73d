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

watchdog(240)
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


# ---- out of descriptors ----
p, path, d = start("max_connections: 1000\nworkers: 2", nofile=40)
conns, refused = [], 0
for i in range(80):
    s = connect(path)
    conns.append(s)
cpu0 = cpu_s(p.pid)
# the refused ones are told why and closed; the others are served
for s in conns:
    s.settimeout(5)
    try:
        s.sendall(msgpack.packb([0, 1, "$/ping", []]))
    except OSError:
        pass            # refused and closed already: its notice is read
    try:
        m = read_one(s, msgpack.Unpacker(raw=False))
    except OSError:
        m = None
    if m is not None and m[0] == 2 and m[1] == "$/error":
        refused += 1
        reason = m[2][1]
t0 = time.monotonic()
while time.monotonic() - t0 < 2:        # a measurement window
    time.sleep(0.1)
spent = cpu_s(p.pid) - cpu0
ok(refused > 0, "RLIMIT_NOFILE 40, 80 connections: %d refused with a reason "
   "(%s)" % (refused, reason if refused else "-"))
ok(spent < 1.0, "and the listener does not spin: %.2f s of CPU in the 2 s "
   "after (2.99 s in 3 s before)" % spent)
warned = [x for x in log_lines if "out of file descriptors" in x or
          "refusing connections" in x]
ok(len(warned) <= 3, "the warning is rate-limited: %d line(s)" % len(warned))
for s in conns:
    s.close()
ok(stop(p, d) == 0, "demuxd stops cleanly")

# ---- closed connections go at once, deadlines or not ----
p, path, d = start("max_connections: 100\nworkers: 2")
fds0 = nfds(p.pid)
for i in range(1500):
    s = connect(path)
    m = call(s, msgpack.Unpacker(raw=False), 1, "echo.echo", [i])
    s.close()
    if m != [1, 1, None, [i]]:
        break
ok(i == 1499, "1500 connect/call/close cycles, each call with a 60 s "
   "deadline pending after its answer")
t0 = time.monotonic()
while nfds(p.pid) > fds0 + 2 and time.monotonic() - t0 < 10:
    pass
ok(nfds(p.pid) <= fds0 + 2, "demuxd holds no descriptor for them: %d open "
   "(%d at start)" % (nfds(p.pid), fds0))
ok(stop(p, d) == 0, "demuxd stops cleanly")

# ---- a cancel storm ----
# max_inflight above the 4000 pinned behind one stuck worker: at the default
# (4096) back pressure could stop reading the very cancels that free it
p, path, d = start("workers: 1\ndrain_timeout_ms: 500\nmax_inflight: 16384")
s = connect(path)
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
# cancel what is in flight: queued ones are answered -32800 at once. The
# answers are read while the cancels go out: a client that writes without
# reading meets back pressure (max_inflight) like any other
canceller = threading.Thread(target=lambda: s.sendall(b"".join(
    msgpack.packb([2, "$/cancelRequest", [i]]) for i in range(N))))
canceller.start()
answered = 0
while answered < N:
    m = read_one(s, u)
    if m is None:
        break
    answered += 1
canceller.join()
ok(answered == N, "cancelling the %d in flight answers each (%d)" %
   (N, answered))
s.close()
ping.close()
ok(stop(p, d) == 0, "demuxd stops cleanly")

# ---- TCP keepalive ----
port = random.randrange(30000, 50000)
p, path, d = start('listen: [ "unix:demux.sock", "tcp:127.0.0.1:%d" ]\n'
                   "tcp_keepalive_ms: 20000" % port)
t = socket.create_connection(("127.0.0.1", port))
m = call(t, msgpack.Unpacker(raw=False), 1, "$/ping", [])
out = subprocess.run(["ss", "-tnoH", "state", "established",
                      "( sport = :%d )" % port], capture_output=True,
                     text=True).stdout
ok(m == [1, 1, None, "pong"] and "keepalive" in out,
   "a TCP connection has keepalive probes on the server side (%s)" %
   out.strip().split("timer:")[-1] if "timer:" in out else out.strip())
t.close()
ok(stop(p, d) == 0, "demuxd stops cleanly")
done_testing()
