#!/usr/bin/python3
# 335-python-hostile.t - clients/python/mux.py against servers that misbehave
# (each a fake server on a unix socket in this process), and demuxd's
# "not found" message for a name cut inside a UTF-8 character:
#  - a server that never reads: a 1 MiB call with timeout=1 raises Timeout
#    in about a second (it used to hang in sendall);
#  - a response whose msgid is a map, or bytes that are not MessagePack:
#    the waiting call fails with ProtocolError at once (the reader thread
#    used to die, and every call then timed out);
#  - a string that is not valid UTF-8 decodes (surrogate escapes) and the
#    connection goes on serving other calls.
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from mux import Mux, ProtocolError, RemoteError, Timeout  # noqa: E402
sys.path.insert(0, HERE)
from tap import (BUILD, diag, done_testing, ok,  # noqa: E402
                 start_demuxd, watchdog)

import msgpack  # noqa: E402

watchdog(60)
tmp = tempfile.mkdtemp(prefix="demux-t.")


def fake_server(name, serve):
    """Listen on a unix socket; run serve(conn) for the first client."""
    path = os.path.join(tmp, name)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(1)

    def run():
        c, _ = ls.accept()
        try:
            serve(c)
        finally:
            c.close()
            ls.close()
    threading.Thread(target=run, daemon=True).start()
    return "unix:" + path


def read_request(c, u):
    """Next request from the client: [0, msgid, method, params]."""
    while True:
        for m in u:
            return m
        data = c.recv(1 << 16)
        if not data:
            return None
        u.feed(data)


# ---- a server that never reads ----
gate = threading.Event()
uri = fake_server("deaf.sock", lambda c: gate.wait(30))
m = Mux(uri)
t0 = time.monotonic()
try:
    m.transaction("x.y", b"\0" * (1 << 20), timeout=1)
    got = "an answer"
except Timeout as e:
    got = "Timeout: %s" % e
except Exception as e:  # noqa: BLE001
    got = "%s: %s" % (type(e).__name__, e)
took = time.monotonic() - t0
ok(got.startswith("Timeout"), "1 MiB call to a server that never reads: "
   "%s" % got)
ok(took < 5, "raised after %.2f s, not stuck in sendall (timeout=1)" % took)
gate.set()
m.close()


# ---- a response whose msgid is a map ----
def map_msgid(c):
    u = msgpack.Unpacker(raw=False)
    req = read_request(c, u)
    if req is not None:
        c.sendall(msgpack.packb([1, {"a": 1}, None, 1]))
    time.sleep(5)   # keep the connection open: the client must not wait


m = Mux(fake_server("mapid.sock", map_msgid))
t0 = time.monotonic()
try:
    m.transaction("x.y", timeout=10)
    got = "an answer"
except ProtocolError as e:
    got = "ProtocolError: %s" % e
except Exception as e:  # noqa: BLE001
    got = "%s: %s" % (type(e).__name__, e)
ok(got.startswith("ProtocolError"), "a response with a map for msgid: %s"
   % got)
ok(time.monotonic() - t0 < 5, "at once, not at the call's timeout")
m.close()


# ---- garbage ----
def garbage(c):
    u = msgpack.Unpacker(raw=False)
    if read_request(c, u) is not None:
        c.sendall(b"\xc1\xc1\xc1")
    time.sleep(5)


m = Mux(fake_server("garbage.sock", garbage))
try:
    m.transaction("x.y", timeout=10)
    got = "an answer"
except ProtocolError as e:
    got = "ProtocolError: %s" % e
except Exception as e:  # noqa: BLE001
    got = "%s: %s" % (type(e).__name__, e)
ok(got.startswith("ProtocolError"), "bytes that are not MessagePack: %s"
   % got)
m.close()


# ---- a string that is not UTF-8, then more calls ----
def bad_utf8(c):
    u = msgpack.Unpacker(raw=False)
    req = read_request(c, u)
    # str type, but "\xe2\x82" is a cut character
    c.sendall(msgpack.packb([1, req[1], [-32601, b"method '\xe2\x82"], None],
                            use_bin_type=False))
    req = read_request(c, u)
    c.sendall(msgpack.packb([1, req[1], None, "fine"]))
    time.sleep(1)


m = Mux(fake_server("utf8.sock", bad_utf8))
try:
    m.transaction("x.y", timeout=10)
    got = "an answer"
except RemoteError as e:
    got = "RemoteError %s" % e.code
except Exception as e:  # noqa: BLE001
    got = "%s: %s" % (type(e).__name__, e)
ok(got == "RemoteError -32601", "an error message that is not valid UTF-8 "
   "still reaches its caller: %s" % got)
try:
    got = m.transaction("x.z", timeout=10)
except Exception as e:  # noqa: BLE001
    got = "%s: %s" % (type(e).__name__, e)
ok(got == "fine", "and the connection still serves: %r" % (got,))
m.close()

# ---- demuxd cuts a long name on a character boundary ----
p, dd = start_demuxd('listen: "unix:demux.sock"\naccess_log: access.log\n'
                     "plugins:\n  - name: echo\n    path: %s/plugins/echo.so\n"
                     % BUILD)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.path.join(dd, "demux.sock"))
s.sendall(msgpack.packb([0, 7, "x" + "\u00e9" * 150, []]))
u = msgpack.Unpacker(raw=True)
resp = None
while resp is None:
    data = s.recv(1 << 16)
    if not data:
        break
    u.feed(data)
    for resp in u:
        break
msg = resp[2][1] if resp else b""
try:
    msg.decode("utf-8", "strict")
    valid = True
except UnicodeDecodeError as e:
    valid = False
    diag(e)
ok(resp is not None and resp[2][0] == -32601 and valid,
   "a 301-byte unknown name: -32601 with a message that is valid UTF-8 "
   "(%d bytes)" % len(msg))
# a name with a newline must not forge an access log line
s.sendall(msgpack.packb([0, 8, "no.such\n2026-01-01T00:00:00.000Z conn=9 "
                         "msgid=9 method=forged status=ok us=1", []]))
resp = None
while resp is None:
    data = s.recv(1 << 16)
    if not data:
        break
    u.feed(data)
    for resp in u:
        break
s.close()
p.terminate()           # the log is complete once demuxd has stopped
ok(p.wait(30) == 0, "demuxd stops cleanly")
with open(os.path.join(dd, "access.log")) as f:
    lines = f.read().splitlines()
subprocess.run(["rm", "-rf", dd])
ok(len(lines) == 2 and lines[1].count(" method=") == 1 and
   "\\x0a" in lines[1] and "\\x20" in lines[1],
   "a newline in a method name is escaped in the access log (%d lines: "
   "%r)" % (len(lines), lines[-1:]))
subprocess.run(["rm", "-rf", tmp])
done_testing()
