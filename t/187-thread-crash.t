#!/usr/bin/python3
# 187-thread-crash.t - a fault in a thread-mode plugin ends demuxd, but not
# silently: the log names the signal, the plugin and the method, with a
# backtrace (also for a stack overflow, on the alternate signal stack), and
# demuxd dies of that signal (non-zero, for systemd's Restart=on-failure); a
# signal outside any plugin is reported as such; the next start on the
# same socket serves.
import os
import signal
import socket
import subprocess
import sys
import tempfile

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import BUILD, diag, done_testing, ok, track, watchdog  # noqa: E402

watchdog(60)
SAN = bool(os.environ.get("SAN_FLAGS"))
D = tempfile.mkdtemp(prefix="demux-t.")
SOCK = os.path.join(D, "demux.sock")
CONF = os.path.join(D, "demux.yaml")
with open(CONF, "w") as f:
    f.write('listen: "unix:demux.sock"\nplugins:\n  - name: crashy\n'
            "    path: %s/t/plugins/crashy.so\n" % BUILD)


def start():
    p = subprocess.Popen([BUILD + "/demuxd", "-c", CONF],
                         stderr=subprocess.PIPE, text=True)
    track(p)
    for line in p.stderr:
        if "READY" in line:
            return p
    return p


def call(method):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(SOCK)
    s.sendall(msgpack.packb([0, 1, method, []]))
    u = msgpack.Unpacker(raw=False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return None
            u.feed(data)
            for m in u:
                return m
    except OSError:
        return None
    finally:
        s.close()


def crash(method, what):
    p = start()
    ok(call(method) is None, "%s: the connection ends without an answer"
       % what)
    log = p.stderr.read()
    rc = p.wait(30)
    if SAN:
        # a sanitizer may report the fault itself (UBSan's null store)
        ok(rc != 0, "%s: demuxd ends non-zero under a sanitizer (%s)"
           % (what, rc))
        return log
    ok(rc == -signal.SIGSEGV, "%s: demuxd dies of SIGSEGV (status %s), "
       "which systemd's Restart=on-failure restarts" % (what, rc))
    want = "fatal signal SIGSEGV in plugin 'crashy', method %s" % method
    ok(want in log and "backtrace:" in log, "%s: the log says '%s', with "
       "a backtrace" % (what, want))
    if want not in log:
        diag(log[-2000:])
    return log


crash("crashy.segv", "a NULL dereference")
crash("crashy.recurse", "a stack overflow")

p = start()
ok(call("$/ping") == [1, 1, None, "pong"], "the next start on the same "
   "socket serves")
p.send_signal(signal.SIGSEGV)
log = p.stderr.read()
rc = p.wait(30)
ok(rc != 0 and ("outside any plugin" in log or SAN), "a SIGSEGV outside "
   "any plugin is reported as demuxd's own (status %s)" % rc)
p = start()
ok(call("$/ping") == [1, 1, None, "pong"], "...and demuxd starts again "
   "after it")
p.send_signal(signal.SIGTERM)
ok(p.wait(30) == 0, "demuxd stops cleanly")
done_testing()
