#!/usr/bin/python3
# 332-python-notify.t - the Python client's on_notify: timer.progress
# notifications arrive in order before the answer, and pubsub messages
# reach a subscriber on another connection.
import os
import signal
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from mux import Mux  # noqa: E402
sys.path.insert(0, HERE)
from tap import BUILD, done_testing, ok, track, watchdog  # noqa: E402

watchdog(60)
d = tempfile.mkdtemp(prefix="demux-t.")
conf = os.path.join(d, "demux.yaml")
with open(conf, "w") as f:
    f.write('listen: "unix:demux.sock"\nworkers: 2\nplugins:\n'
            "  - name: timer\n    path: %s/plugins/timer.so\n"
            "  - name: pubsub\n    path: %s/plugins/pubsub.so\n"
            % (BUILD, BUILD))
srv = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                       stderr=subprocess.PIPE, text=True)
track(srv)
for line in srv.stderr:
    if "READY" in line:
        break
threading.Thread(target=lambda: [None for _ in srv.stderr],
                 daemon=True).start()
uri = "unix:" + os.path.join(d, "demux.sock")
try:
    seen = []
    m = Mux(uri, on_notify=lambda method, params: seen.append(
        (method, params)))
    ok(m.transaction("timer.progress", 4, 10) == 4,
       "timer.progress [4, 10] answers 4")
    # on_notify runs on the reader thread before the answer is handed over
    ok([p[1:] for (meth, p) in seen if meth == "timer.progress"] ==
       [[1, 4], [2, 4], [3, 4], [4, 4]],
       "...after its notifications [msgid, i, 4], i = 1..4, in order: %r"
       % (seen,))

    got = threading.Event()
    msgs = []

    def on_msg(method, params):
        msgs.append((method, params))
        if len(msgs) == 3:
            got.set()

    sub = Mux(uri, on_notify=on_msg)
    ok(sub.transaction("pubsub.subscribe", "news") is True,
       "pubsub.subscribe on a second connection")
    for i in range(3):
        n = m.transaction("pubsub.publish", "news", {"i": i})
    ok(n == 1, "pubsub.publish says it was queued for 1 subscriber")
    ok(got.wait(5) and msgs == [("pubsub.message", ["news", {"i": i}])
                                for i in range(3)],
       "...which got the three messages in order: %r" % (msgs,))
    sub.close()
    m.close()
finally:
    srv.send_signal(signal.SIGTERM)
    ok(srv.wait(30) == 0, "demuxd stops cleanly")
done_testing()
