#!/usr/bin/python3
# 191-tls-clients.t - the Python client over tls: with a token, many threads
# on one TLS connection, refusals (a wrong secret, an unknown CA), the
# client_auth none mode, and certificate rotation by SIGHUP under load with
# zero failed calls (a bad new certificate refused, the old one kept).
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from tap import BUILD, diag, done_testing, ok, track, watchdog  # noqa: E402
from certs import Certs  # noqa: E402
from mux import ConnectError, Mux, MuxError, RemoteError  # noqa: E402

watchdog(120)
D = tempfile.mkdtemp(prefix="demux-tls.")
C = Certs(D)
C.ca("ca")
C.cert("server1", "demux-server-1", "ca", "IP:127.0.0.1")
C.cert("server2", "demux-server-2", "ca", "IP:127.0.0.1")
C.cert("client", "billing-1", "ca")


def use_cert(name):
    """Make name the certificate the configuration points to."""
    for ext in (".crt", ".key"):
        with open(C.path(name + ext), "rb") as f:
            data = f.read()
        with open(C.path("live" + ext + ".new"), "wb") as f:
            f.write(data)
        os.replace(C.path("live" + ext + ".new"), C.path("live" + ext))


use_cert("server1")
fd = os.open(C.path("ci.token"), os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, b"s3cret-ci\n")
os.close(fd)

s = __import__("socket").socket()
s.bind(("127.0.0.1", 0))
PORT = s.getsockname()[1]
s.close()
URI = "tls:127.0.0.1:%d" % PORT
conf = C.path("demux.yaml")
with open(conf, "w") as f:
    f.write("""listen: [ "tls:127.0.0.1:%d" ]
workers: 8
tls:
  cert: live.crt
  key: live.key
  ca: ca.crt
  client_auth: none
auth:
  tokens:
    - name: ci
      secret_file: ci.token
access:
  - identity: "token:ci"
    allow: [ "echo.*", "crashy.*", "$/stats" ]
  - identity: "*"
    allow: [ "$/ping" ]
plugins:
  - name: echo
    path: %s/plugins/echo.so
  - name: crashy
    path: %s/t/plugins/crashy.so
""" % (PORT, BUILD, BUILD))
srv = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                       stderr=subprocess.PIPE, text=True)
track(srv)
LOG = []
for line in srv.stderr:
    LOG.append(line)
    if "READY" in line:
        break
threading.Thread(target=lambda: [LOG.append(x) for x in srv.stderr],
                 daemon=True).start()


def context(cert=None):
    ctx = ssl.create_default_context(cafile=C.path("ca.crt"))
    ctx.check_hostname = False      # the certificate names 127.0.0.1
    if cert:
        ctx.load_cert_chain(C.path(cert + ".crt"), C.path(cert + ".key"))
    return ctx


AUTH = ("ci", "s3cret-ci")
try:
    m = Mux(URI, ssl_context=context(), auth=AUTH)
    ok(m.transaction("crashy.whoami") == "token:ci",
       "Mux(\"tls:...\", ssl_context=, auth=): the plugin sees token:ci")
    ok(m._sock.version() in ("TLSv1.2", "TLSv1.3"), "...over %s" %
       m._sock.version())

    # many threads on one TLS connection
    bad = []

    def hammer(t):
        for i in range(250):
            want = ["t%d-%d" % (t, i), "x" * ((t * 37 + i * 11) % 3000)]
            try:
                got = m.transaction("echo.echo", *want, timeout=30)
            except MuxError as e:
                bad.append(repr(e))
                return
            if got != want:
                bad.append("thread %d call %d: %r" % (t, i, got)[:200])
    th = [threading.Thread(target=hammer, args=(t,)) for t in range(16)]
    [t.start() for t in th]
    [t.join() for t in th]
    ok(not bad, "16 threads x 250 calls on one TLS Mux: each answer reached "
       "its caller intact %s" % bad[:2])

    # refusals
    try:
        Mux(URI, ssl_context=context(), auth=("ci", "wrong"))
        why = None
    except RemoteError as e:
        why = (e.code, e.message)
    ok(why == (-32015, "authentication failed"), "a wrong secret: the "
       "constructor raises RemoteError -32015 (%r)" % (why,))
    why = None
    try:
        Mux(URI, auth=AUTH)
    except ConnectError as e:
        if isinstance(e.error, ssl.SSLCertVerificationError):
            why = str(e)
    ok(why is not None and URI in why, "the default context (the system's "
       "CAs) refuses a server certificate of our own CA: ConnectError (%s)"
       % why)
    a = Mux(URI, ssl_context=context("client"))
    ok(a.transaction("$/ping") == "pong", "without a token $/ping is "
       "served...")
    try:
        a.transaction("crashy.whoami")
        why = None
    except RemoteError as e:
        why = (e.code, e.message)
    ok(why is not None and why[0] == -32015 and "unauthenticated" in why[1],
       "...and with client_auth none a client certificate is not asked "
       "for: the caller is anonymous (%r)" % (why,))
    a.close()

    # rotation under load: long-lived connections, and a new handshake for
    # every call, while SIGHUP swaps the certificate three times
    stop = threading.Event()
    fails, calls, seen = [], [0], set()

    def steady(t):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if m.transaction("echo.echo", t, i, timeout=30) != [t, i]:
                    fails.append("steady %d: wrong answer" % t)
                calls[0] += 1
            except MuxError as e:
                fails.append("steady %d: %r" % (t, e))
                return

    def fresh():
        while not stop.is_set():
            try:
                c = Mux(URI, ssl_context=context(), auth=AUTH)
                cn = dict(x[0] for x in c._sock.getpeercert()["subject"])
                seen.add(cn["commonName"])
                if c.transaction("crashy.whoami", timeout=30) != "token:ci":
                    fails.append("fresh: wrong identity")
                c.close()
                calls[0] += 1
            except (MuxError, OSError) as e:
                fails.append("fresh: %r" % e)
                return

    def reloads(field):
        return m.transaction("$/stats")["server"][field]

    def reload_and_wait(field):
        """SIGHUP, then wait for the reload to be counted (the counter goes
        up once the switch is made, or the refusal logged)."""
        n = reloads(field)
        srv.send_signal(signal.SIGHUP)
        while reloads(field) == n:
            threading.Event().wait(0.01)
    th = ([threading.Thread(target=steady, args=(t,)) for t in range(4)] +
          [threading.Thread(target=fresh) for _ in range(2)])
    [t.start() for t in th]
    for name in ("server2", "server1", "server2"):
        before = calls[0]
        use_cert(name)
        reload_and_wait("reloads")
        while calls[0] < before + 200 and not fails:
            threading.Event().wait(0.01)    # let load run on the new one
    # a bad new certificate: refused, the old one kept
    with open(C.path("live.crt"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n")
    reload_and_wait("reload_failures")
    before = calls[0]
    while calls[0] < before + 200 and not fails:
        threading.Event().wait(0.01)
    stop.set()
    [t.join() for t in th]
    ok(not fails, "certificate rotation by SIGHUP three times under load: "
       "%d calls, none failed %s" % (calls[0], fails[:3]))
    ok(seen == {"demux-server-1", "demux-server-2"}, "...new handshakes got "
       "each new certificate (%s)" % sorted(seen))
    ok(any("keeping the running configuration" in x and "live.crt" in x
           for x in LOG), "a bad new certificate: the reload is refused, "
       "naming the file")
    c = Mux(URI, ssl_context=context(), auth=AUTH)
    cn = dict(x[0] for x in c._sock.getpeercert()["subject"])["commonName"]
    ok(cn == "demux-server-2", "...and new handshakes keep the old "
       "certificate (%s)" % cn)
    c.close()
    m.close()
finally:
    srv.send_signal(signal.SIGTERM)
    ok(srv.wait(30) == 0, "demuxd stops cleanly")
if any("ERROR" in x or "Sanitizer" in x for x in LOG):
    diag("".join(LOG[-20:]))
done_testing()
