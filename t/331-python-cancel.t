#!/usr/bin/python3
# 331-python-cancel.t - the Python client cancels: Call.cancel() sends
# $/cancelRequest (a queued call never runs, a running one gives up), a
# transaction that times out is cancelled on the server too, and a failed
# connection raises ConnectError naming the address.
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from mux import Cancelled, ConnectError, Mux, Timeout  # noqa: E402
sys.path.insert(0, HERE)
from tap import BUILD, done_testing, ok, track, watchdog  # noqa: E402

watchdog(60)
d = tempfile.mkdtemp(prefix="demux-t.")
conf = os.path.join(d, "demux.yaml")
with open(conf, "w") as f:
    f.write('listen: "unix:demux.sock"\nworkers: 1\nplugins:\n'
            "  - name: sleep\n    path: %s/plugins/sleep.so\n" % BUILD)
srv = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                       stderr=subprocess.PIPE, text=True)
track(srv)
for line in srv.stderr:
    if "READY" in line:
        break
threading.Thread(target=lambda: [None for _ in srv.stderr],
                 daemon=True).start()
try:
    m = Mux("unix:" + os.path.join(d, "demux.sock"))
    a = m.submit("sleep.sleep", 2000)
    b = m.submit("sleep.sleep", 2000)
    # answered after both were read: A runs on the only worker, B waits
    ok(m.transaction("$/ping") == "pong", "two 2 s calls in flight "
       "(submit), one running, one queued")
    ok(not b.done(), "...neither is answered yet")
    t0 = time.monotonic()
    ok(b.cancel() is True, "Call.cancel() on the queued call")
    try:
        b.wait(5)
        why = None
    except Cancelled as e:
        why = str(e)
    ok(why is not None and time.monotonic() - t0 < 0.5, "...its waiter "
       "raises Cancelled at once (%s)" % why)
    ok(b.cancel() is False, "...a second cancel finds it ended")
    a.cancel()
    t0 = time.monotonic()
    ok(m.transaction("sleep.sleep", 10, timeout=5) == 10 and
       time.monotonic() - t0 < 0.8, "the running call gave up on "
       "$/cancelRequest: the only worker was free again at once, and B "
       "never ran (next call took %.0f ms)" %
       ((time.monotonic() - t0) * 1000))
    try:
        m.transaction("sleep.sleep", 2000, timeout=0.1)
        why = None
    except Timeout as e:
        why = str(e)
    ok(why is not None and "$/cancelRequest" in why, "a 2 s call with a "
       "0.1 s timeout: Timeout, saying the server was told (%s)" % why)
    t0 = time.monotonic()
    ok(m.transaction("sleep.sleep", 10, timeout=5) == 10 and
       time.monotonic() - t0 < 0.8, "...and it was cancelled on the server: "
       "the next call took %.0f ms, not the rest of 2 s" %
       ((time.monotonic() - t0) * 1000))
    c = m.submit("sleep.sleep", 300)
    try:
        c.wait(0.01)
        why = None
    except Timeout:
        why = "timeout"
    ok(why == "timeout" and c.wait(5) == 300, "Call.wait(timeout) raises "
       "Timeout and leaves the call in flight: a later wait gets its answer")
    m.close()
finally:
    srv.send_signal(signal.SIGTERM)
    ok(srv.wait(30) == 0, "demuxd stops cleanly")

for uri, needle in (("unix:" + d + "/nope.sock", d + "/nope.sock"),
                    ("tcp:127.0.0.1:1", "127.0.0.1:1")):
    why = cause = None
    try:
        Mux(uri)
    except ConnectError as e:
        why, cause = str(e), e.error
    ok(why is not None and needle in why and isinstance(cause, OSError),
       "a failed connection raises ConnectError naming the address: %s"
       % why)
done_testing()
