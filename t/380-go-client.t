#!/usr/bin/python3
# 380-go-client.t - Go's net/rpc with ugorji's MsgpackSpecRpc codec (built
# offline, GOPATH mode, from Debian's golang-go and
# golang-github-ugorji-go-codec-dev) reads an error only as a string: on a
# listener with error_format: array (the default) our [code, message,
# trace] makes it shut the connection, failing every call in flight; on one
# with error_format: string it reads "CODE: message" and goes on.
# Skipped only where go or the codec is not installed (CI installs both).
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tap import BUILD, diag, done_testing, ok, track, watchdog  # noqa: E402

watchdog(120)
CODEC = "/usr/share/gocode/src/github.com/ugorji/go/codec"
if not os.access("/usr/bin/go", os.X_OK) or not os.path.isdir(CODEC):
    print("1..0 # SKIP go or the ugorji codec is not installed "
          "(apt-get install golang-go golang-github-ugorji-go-codec-dev)")
    sys.exit(0)
D = tempfile.mkdtemp(prefix="demux-t.")
env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off",
           GOCACHE=os.path.join(D, "gocache"), GOFLAGS="", GOPROXY="off")
b = subprocess.run(["/usr/bin/go", "build", "-o", os.path.join(D, "client"),
                    os.path.join(HERE, "go", "client.go")], env=env,
                   capture_output=True, text=True, cwd=D, timeout=110)
ok(b.returncode == 0, "the Go client builds offline (GOPATH mode)")
if b.returncode != 0:
    diag(b.stderr[-2000:])
    done_testing()

conf = os.path.join(D, "demux.yaml")
with open(conf, "w") as f:
    f.write("""listen:
  - "unix:array.sock"
  - { address: "unix:string.sock", error_format: string }
workers: 16
plugins:
  - name: echo
    path: %s/plugins/echo.so
  - name: sleep
    path: %s/plugins/sleep.so
  - name: psleep
    path: %s/plugins/sleep.so
    isolation: process
""" % (BUILD, BUILD, BUILD))
srv = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                       stderr=subprocess.PIPE, text=True)
track(srv)
for line in srv.stderr:
    if "READY" in line:
        break
threading.Thread(target=lambda: [None for _ in srv.stderr],
                 daemon=True).start()


def run(sock):
    r = subprocess.run([os.path.join(D, "client"), os.path.join(D, sock)],
                       capture_output=True, text=True, timeout=60)
    out = dict(x.split(": ", 1) for x in r.stdout.splitlines() if ": " in x)
    return r, out


try:
    r, out = run("string.sock")
    ok(out.get("echo") == "[1 two] err=<nil>", "error_format: string: a "
       "call is answered (%s)" % out.get("echo"))
    ok(out.get("error", "").startswith("-32601: ") and
       "no.such" in out.get("error", ""), "...an unknown method reaches "
       "the Go caller as the error \"CODE: message\" (%s)" %
       out.get("error"))
    ok(out.get("inflight ok") == "8 of 8", "...the 8 calls in flight "
       "beside it are all answered (%s)" % out.get("inflight ok"))
    ok(out.get("after") == "[3] err=<nil>", "...and the connection goes "
       "on (%s)" % out.get("after"))

    # a plugin's own error, in thread and in process mode (where the
    # child's [code, message, trace] is turned into the string on its way)
    for method in ("sleep.sleep", "psleep.sleep"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(os.path.join(D, "string.sock"))
        s.sendall(msgpack.packb([0, 7, method, [-5]]))
        u = msgpack.Unpacker(raw=False)
        got = None
        while got is None:
            u.feed(s.recv(65536))
            for got in u:
                break
        s.close()
        ok(isinstance(got[2], str) and got[2].startswith("1: "),
           "error_format: string: %s's own error is one string (%r)"
           % (method, got[2]))

    r, out = run("array.sock")
    ok(out.get("echo") == "[1 two] err=<nil>", "error_format: array (the "
       "default): a call is answered")
    ok(out.get("inflight ok") != "8 of 8" and "err=<nil>" not in
       out.get("after", ""), "...but this codec cannot read [code, "
       "message, trace]: it shuts the connection, failing the calls in "
       "flight (%s; after: %s) - which is why error_format exists" %
       (out.get("inflight ok"), out.get("after")))
finally:
    srv.send_signal(signal.SIGTERM)
    ok(srv.wait(30) == 0, "demuxd stops cleanly")
done_testing()
