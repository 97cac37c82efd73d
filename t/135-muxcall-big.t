#!/usr/bin/python3
# 135-muxcall-big.t - muxcall prints a result straight from its bytes:
#  - a 9.5 MiB result of 10M elements prints in memory that does not grow
#    with the elements (639 MB peak before: a tree of msgpack-c objects, then
#    one of jansson values);
#  - a result nested deeper than JSON parsers accept fails with a clear
#    message and status 5 (it printed "null" and exited 0).
import os
import resource
import socket
import subprocess
import sys
import threading

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tap import (BUILD, done_testing, ok, start_demuxd,  # noqa: E402
                 stop_demuxd, watchdog)

watchdog(120)
SAN = bool(os.environ.get("SAN_FLAGS"))
p, d = start_demuxd('listen: "unix:demux.sock"\nmax_elements: 20000000\n'
                    "plugins:\n  - name: kv\n    path: %s/plugins/kv.so\n"
                    % BUILD)
path = os.path.join(d, "demux.sock")
uri = "unix:" + path


def kv_set_raw(key, packed_value):
    """kv.set with a value given as msgpack bytes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"\x94\x00\x01\xa6kv.set\x92" + msgpack.packb(key) +
              packed_value)
    u = msgpack.Unpacker(raw=False)
    while True:
        data = s.recv(1 << 16)
        if not data:
            return None
        u.feed(data)
        for m in u:
            s.close()
            return m


N = 10_000_000 if not SAN else 1_000_000
# packed by hand: this process stays small (a fork of it is measured too)
r = kv_set_raw("big", b"\xdd" + N.to_bytes(4, "big") + b"\x00" * N)
ok(r is not None and r[2] is None, "kv.set of %d elements" % N)
out = subprocess.run([BUILD + "/muxcall", "-c", uri, "-t", "60000", "kv.get",
                      '"big"'], capture_output=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
text = out.stdout
ok(out.returncode == 0 and text.startswith(b"[0, 0") and
   text.count(b",") == N - 1, "muxcall prints all %d (%d bytes of JSON)" %
   (N, len(text)))
if SAN:
    ok(True, "(sanitizer: peak RSS %d kB not checked)" % peak_kb)
else:
    ok(peak_kb < 120 * 1024, "in bounded memory: peak RSS %d kB for a %.1f "
       "MiB result (639 MB before)" % (peak_kb, (N + 5) / 2**20))

# demuxd's plugins cannot even decode such a value: a fake server answers
fake = os.path.join(d, "fake.sock")
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(fake)
ls.listen(1)


def answer_deep():
    c, _ = ls.accept()
    u = msgpack.Unpacker(raw=False)
    while True:
        data = c.recv(1 << 16)
        if not data:
            break
        u.feed(data)
        for req in u:
            c.sendall(b"\x94\x01" + msgpack.packb(req[1]) + b"\xc0" +
                      b"\x91" * 100000 + b"\xc0")
    c.close()


threading.Thread(target=answer_deep, daemon=True).start()
out = subprocess.run([BUILD + "/muxcall", "-c", "unix:" + fake, "x.deep"],
                     capture_output=True, text=True)
ok(out.returncode == 5 and "nested deeper than 2048 levels" in out.stderr,
   "muxcall fails with status 5 and says why (status %d: %s)" %
   (out.returncode, out.stderr.strip()[-80:]))
ok(stop_demuxd(p, d) == 0, "demuxd stops cleanly")
done_testing()
