#!/usr/bin/python3
# 189-tls.t - tls: listeners. Certificates are made here with the openssl
# command (a CA, a server certificate for 127.0.0.1, client certificates
# from that CA and from another); Python's ssl module is the client,
# carrying raw MessagePack. Covers: client_auth require and optional, the
# cert:CN identity a plugin sees, refused client certificates (none, another
# CA) with a logged reason, plaintext and garbage to a TLS port, a stalled
# handshake closed at handshake_timeout_ms while others are served, and
# certificate rotation by SIGHUP (live sessions keep theirs).
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import BUILD, diag, done_testing, ok, track, watchdog  # noqa: E402
from certs import Certs  # noqa: E402

watchdog(120)
D = tempfile.mkdtemp(prefix="demux-tls.")


C = Certs(D)
C.ca("ca")
C.ca("otherca")
C.cert("server", "demux-server-1", "ca", "IP:127.0.0.1")
C.cert("server2", "demux-server-2", "ca", "IP:127.0.0.1")
C.cert("client", "billing-1", "ca")
C.cert("stranger", "billing-2", "otherca")
C.expired("expired", "billing-3", "ca")


def free_port():
    """A port free a moment ago whose next one is free too."""
    while True:
        s, t = socket.socket(), socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        try:
            t.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
        finally:
            s.close()
            t.close()
        return p


LOG = []


def start(client_auth, port):
    conf = os.path.join(D, "demux-%s.yaml" % client_auth)
    with open(conf, "w") as f:
        f.write("""listen: [ "unix:%s/d-%s.sock", "tls:127.0.0.1:%d",
          "tcp:127.0.0.1:%d" ]
tls:
  cert: %s/server.crt
  key: %s/server.key
  ca: %s/ca.crt
  client_auth: %s
  handshake_timeout_ms: 500
plugins:
  - name: crashy
    path: %s/t/plugins/crashy.so
""" % (D, client_auth, port, port + 1, D, D, D, client_auth, BUILD))
    p = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                         stderr=subprocess.PIPE, text=True)
    track(p)
    for line in p.stderr:
        if "READY" in line:
            break
    threading.Thread(target=lambda: [LOG.append(x) for x in p.stderr],
                     daemon=True).start()
    return p


def context(cert=None):
    ctx = ssl.create_default_context(cafile=os.path.join(D, "ca.crt"))
    ctx.check_hostname = False      # the certificate is for 127.0.0.1
    if cert:
        ctx.load_cert_chain(os.path.join(D, cert + ".crt"),
                            os.path.join(D, cert + ".key"))
    return ctx


def tls_connect(port, cert=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context(cert).wrap_socket(s, server_hostname="127.0.0.1")


def call(s, method, params=(), msgid=1):
    s.sendall(msgpack.packb([0, msgid, method, list(params)]))
    u = msgpack.Unpacker(raw=False)
    while True:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed")
        u.feed(data)
        for msg in u:
            return msg


def refused(port, cert):
    """True if a TLS client with cert (or none) cannot make a call."""
    try:
        s = tls_connect(port, cert)
        call(s, "$/ping")
        return False
    except (ssl.SSLError, ConnectionError, OSError):
        return True


def wait_log(text, seconds=5):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if any(text in x for x in LOG):
            return True
        time.sleep(0.02)    # polling a log: no event to wait for
    return False


# ---- client_auth: require ----
port = free_port()
srv = start("require", port)
s = tls_connect(port, "client")
r = call(s, "crashy.whoami")
ok(r[2] is None and r[3] == "cert:billing-1",
   "a TLS call with a client certificate is answered; the plugin sees "
   "cert:CN (%r)" % (r,))
ok(s.version() in ("TLSv1.2", "TLSv1.3"), "...over %s" % s.version())
peer = s.getpeercert()
ok(dict(x[0] for x in peer["subject"]).get("commonName") ==
   "demux-server-1", "...and the server presents its certificate")
ok(refused(port, None), "client_auth require: no client certificate, "
   "refused")
ok(refused(port, "stranger"), "a certificate from another CA: refused")
ok(refused(port, "expired"), "an expired certificate: refused")
ok(wait_log("certificate has expired"), "...logged as expired")
ok(wait_log("handshake failed"), "...and the refusal is logged with its "
   "reason")

# plaintext and garbage to the TLS port
for what, data in (("plaintext MessagePack-RPC",
                    msgpack.packb([0, 1, "$/ping", []])),
                   ("garbage", os.urandom(4096))):
    g = socket.create_connection(("127.0.0.1", port), timeout=5)
    g.sendall(data)
    closed = False
    g.settimeout(3)
    try:
        while g.recv(4096):     # an alert may come first, then EOF
            pass
        closed = True
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    ok(closed, "%s to a TLS port: the connection is closed" % what)
    g.close()
r = call(s, "crashy.whoami", msgid=2)
ok(r[3] == "cert:billing-1", "...and the TLS connection beside it goes on")

# interop: openssl s_client carrying raw MessagePack
sc = subprocess.Popen(["openssl", "s_client", "-connect",
                       "127.0.0.1:%d" % port, "-CAfile", D + "/ca.crt",
                       "-cert", D + "/client.crt", "-key", D + "/client.key",
                       "-quiet", "-ign_eof"], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
track(sc)
sc.stdin.write(msgpack.packb([0, 7, "$/ping", []]))
sc.stdin.flush()
want = msgpack.packb([1, 7, None, "pong"])
got = b""
t0 = time.time()
os.set_blocking(sc.stdout.fileno(), False)
while want not in got and time.time() - t0 < 10:
    try:
        got += sc.stdout.read() or b""
    except BlockingIOError:
        pass
    time.sleep(0.01)    # polling a pipe we do not own the other end of
sc.kill()
sc.wait()
ok(want in got, "openssl s_client carrying raw MessagePack gets its "
   "answer")

# interop: HAProxy terminating TLS in front of demuxd's tcp listener, and
# re-encrypting to its tls listener with a client certificate
if os.access("/usr/sbin/haproxy", os.X_OK):
    for src, dst in (("server", "haproxy-server.pem"),
                     ("client", "haproxy-client.pem")):
        with open(os.path.join(D, dst), "w") as f:
            for ext in (".crt", ".key"):
                f.write(open(os.path.join(D, src + ext)).read())
    hp1, hp2 = free_port(), free_port()
    with open(os.path.join(D, "haproxy.cfg"), "w") as f:
        f.write("""defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend terminate
  bind 127.0.0.1:%d ssl crt %s/haproxy-server.pem
  default_backend plain
backend plain
  server d 127.0.0.1:%d
frontend reencrypt
  bind 127.0.0.1:%d
  default_backend tls
backend tls
  server d 127.0.0.1:%d ssl verify required ca-file %s/ca.crt crt %s/haproxy-client.pem
""" % (hp1, D, port + 1, hp2, port, D, D))
    hx = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-q", "-f",
                           os.path.join(D, "haproxy.cfg")])
    track(hx)
    got1 = got2 = None
    t0 = time.time()
    while (got1 is None or got2 is None) and time.time() - t0 < 10:
        try:
            if got1 is None:
                c = socket.create_connection(("127.0.0.1", hp1), timeout=5)
                c = context().wrap_socket(c, server_hostname="127.0.0.1")
                got1 = call(c, "crashy.whoami")[3]
                c.close()
            if got2 is None:
                c = socket.create_connection(("127.0.0.1", hp2), timeout=5)
                got2 = call(c, "crashy.whoami")[3]
                c.close()
        except (OSError, ssl.SSLError, ConnectionError):
            time.sleep(0.05)    # haproxy has no readiness signal
    ok(got1 == "anonymous", "HAProxy terminating TLS in front of demuxd's "
       "tcp listener: served (%r)" % got1)
    ok(got2 == "cert:billing-1", "HAProxy re-encrypting to demuxd's tls "
       "listener (ssl verify required, its client certificate): served as "
       "%r" % got2)
    hx.kill()
    hx.wait()

# 500 TLS connections at once
conns = []
try:
    for i in range(500):
        conns.append(tls_connect(port, "client"))
    answered = sum(1 for i, c in enumerate(conns)
                   if call(c, "$/ping", msgid=i + 1)[3] == "pong")
except (OSError, ssl.SSLError) as e:
    answered = -1
    diag("500 connections: %s" % e)
ok(answered == 500, "500 concurrent TLS connections, each answered "
   "(%d)" % answered)
for c in conns:
    c.close()

# a stalled handshake
stall = socket.create_connection(("127.0.0.1", port), timeout=5)
t0 = time.time()
others = 0
while time.time() - t0 < 0.3:
    c = tls_connect(port, "client")
    if call(c, "$/ping")[3] == "pong":
        others += 1
    c.close()
ok(others > 0, "while one client stalls its handshake, %d other TLS "
   "clients were served" % others)
stall.settimeout(5)
try:
    gone = stall.recv(1) == b""
except (ConnectionResetError, socket.timeout):
    gone = True
dt = time.time() - t0
ok(gone and dt < 3, "the stalled handshake is closed at "
   "handshake_timeout_ms 500 (after %.2f s)" % dt)
stall.close()

# libmux and muxcall over tls:
def muxcall(*args):
    r = subprocess.run([BUILD + "/muxcall", "-c", "tls:127.0.0.1:%d" % port,
                        *args], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


rc, out = muxcall("--tls-ca", D + "/ca.crt", "--tls-cert", D + "/client.crt",
                  "--tls-key", D + "/client.key", "crashy.whoami")
ok(rc == 0 and "cert:billing-1" in out, "libmux tls: (muxcall --tls-ca "
   "--tls-cert --tls-key): %s" % out.strip())
rc, out = muxcall("--tls-ca", D + "/otherca.crt", "--tls-cert",
                  D + "/client.crt", "--tls-key", D + "/client.key",
                  "crashy.whoami")
ok(rc != 0 and "server certificate refused" in out, "...a server whose "
   "certificate the CA does not sign is refused: %s" % out.strip())
rc, out = muxcall("--tls-ca", D + "/ca.crt", "crashy.whoami")
ok(rc != 0 and "requires a client certificate" in out, "...and without a "
   "client certificate, client_auth require refuses us, and says so: %s"
   % out.strip()[:160])

# rotation by SIGHUP
os.replace(os.path.join(D, "server2.crt"), os.path.join(D, "server.crt"))
os.replace(os.path.join(D, "server2.key"), os.path.join(D, "server.key"))
srv.send_signal(signal.SIGHUP)
ok(wait_log(": generation 1:"), "SIGHUP reloads")
n = tls_connect(port, "client")
peer = n.getpeercert()
ok(dict(x[0] for x in peer["subject"]).get("commonName") ==
   "demux-server-2", "a new handshake gets the new certificate")
r = call(s, "crashy.whoami", msgid=3)
ok(r[3] == "cert:billing-1", "the live session keeps working")
n.close()
s.close()
srv.send_signal(signal.SIGTERM)
ok(srv.wait(30) == 0, "demuxd stops cleanly")

# ---- client_auth: optional ----
port = free_port()
srv = start("optional", port)
a = tls_connect(port, None)
ok(call(a, "crashy.whoami")[3] == "anonymous", "client_auth optional: no "
   "certificate is anonymous")
b = tls_connect(port, "client")
ok(call(b, "crashy.whoami")[3] == "cert:billing-1", "...a certificate "
   "gives cert:CN")
a.close()
b.close()
srv.send_signal(signal.SIGTERM)
ok(srv.wait(30) == 0, "demuxd stops cleanly")
if any("ERROR" in x or "Sanitizer" in x for x in LOG):
    diag("".join(LOG[-20:]))
done_testing()
