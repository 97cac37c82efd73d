#!/usr/bin/python3
"""client.py -u unix:PATH -T threads -s size (-d secs -w warm | -n calls)
-P server_pid -L label: T threads calling Mux.transaction() back to back on
ONE recipe connection; prints the peers' RESULT line (common.h)."""
import getopt
import os
import resource
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe import Mux, SimpleChannelEndpoint  # noqa: E402

opts, _ = getopt.getopt(sys.argv[1:], "u:T:s:d:w:n:P:L:")
o = dict(opts)
T = int(o.get("-T", "1"))
size = int(o.get("-s", "64"))
dur = float(o.get("-d", "0"))
warm = float(o.get("-w", "0"))
ncalls = int(o.get("-n", "0"))
spid = int(o.get("-P", "0"))
label = o.get("-L", "-")
tck = os.sysconf("SC_CLK_TCK")


def srv_cpu_us():
    try:
        with open("/proc/%d/stat" % spid) as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) * 1e6 / tck
    except (OSError, IndexError, ValueError):
        return 0.0


s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(o["-u"][5:])
fd = s.detach()
mux = Mux(SimpleChannelEndpoint(fd, fd))
mux.start()
payload = b"x" * size
lat = []
lock = threading.Lock()
count = [0]
errors = [0]
measuring = threading.Event()
stop = threading.Event()
go = threading.Barrier(T + 1)    # every thread started before the clock


def worker():
    go.wait()
    mine = []
    n = 0
    while not stop.is_set() and (ncalls == 0 or n < ncalls):
        t0 = time.perf_counter()
        try:
            r = mux.transaction(payload)
            ok = r == (payload,)
        except Exception:
            ok = False
        dt = time.perf_counter() - t0
        n += 1
        if measuring.is_set() or ncalls:
            mine.append(dt)
            if not ok:
                with lock:
                    errors[0] += 1
    with lock:
        lat.extend(mine)


ths = [threading.Thread(target=worker, daemon=True) for _ in range(T)]
if ncalls:
    measuring.set()
for t in ths:
    t.start()
wall0 = time.perf_counter()
go.wait()
if not ncalls:
    time.sleep(warm)
    measuring.set()
ru0 = resource.getrusage(resource.RUSAGE_SELF)
sc0 = srv_cpu_us()
t0 = time.perf_counter()
if ncalls:
    for t in ths:
        t.join()
else:
    time.sleep(dur)
secs = time.perf_counter() - t0
ru1 = resource.getrusage(resource.RUSAGE_SELF)
sc1 = srv_cpu_us()
stop.set()
for t in ths:
    t.join()
wall = time.perf_counter() - wall0
tx = len(lat)
lat.sort()


def q(p):
    return lat[min(tx - 1, int(tx * p))] * 1e6 if tx else 0.0


cli = ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) * 1e6
print("RESULT peer=recipe label=%s T=%d size=%d ncalls=%d tx=%d errors=%d "
      "secs=%.3f txps=%.0f MBps=%.1f p50_us=%.1f p99_us=%.1f max_us=%.1f "
      "cli_cpu_us_tx=%.2f srv_cpu_us_tx=%.2f wall_ms=%.1f" %
      (label, T, size, ncalls, tx, errors[0], secs, tx / secs,
       tx * size / secs / 1e6, q(0.5), q(0.99), (lat[-1] * 1e6 if tx else 0),
       cli / max(tx, 1), (sc1 - sc0) / max(tx, 1), wall * 1000), flush=True)
os._exit(0)
