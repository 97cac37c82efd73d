#!/usr/bin/python3
# 170-hostile.t - 10,000 malformed, truncated, oversized and wrongly typed
# messages over many connections, plus abrupt disconnects with calls in
# flight, while a well-behaved client runs on its own connection: the good
# client sees no error, demuxd's memory stays bounded, nothing crashes.
# With HOSTILE_TLS=1 (t/171) the same over a tls: listener, where a share of
# the hostile connections also sends garbage instead of a handshake.
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

import msgpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import BUILD, diag, done_testing, ok, rss_kb  # noqa: E402
from tap import track, watchdog  # noqa: E402
from certs import basic  # noqa: E402

watchdog(120)
TLS = os.environ.get("HOSTILE_TLS") == "1"
ADDR = None         # the unix socket's path, or ("127.0.0.1", port)
CTX = None


def dial(timeout=10, handshake=True):
    """A connection to demuxd as the test's clients make them: unix, or
    TLS (handshake False: a TCP connection to the TLS port, no TLS)."""
    if not TLS:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(ADDR)
        return s
    s = socket.create_connection(ADDR, timeout=timeout)
    return CTX.wrap_socket(s) if handshake else s

def bad_messages(rng):
    """One hostile byte string of a random kind."""
    k = rng.randrange(10)
    if k == 0:
        return b"\xc1" + os.urandom(rng.randrange(1, 64))     # not msgpack
    if k == 1:                                               # truncated
        m = msgpack.packb([0, rng.randrange(2**32), "echo.echo", ["x" * 50]])
        return m[:rng.randrange(1, len(m))]
    if k == 2:
        return b"\xdb\xff\xff\xff\xff"                          # 4 GiB str
    if k == 3:
        return msgpack.packb([0, 1, "echo.echo", ["y" * 70000]])  # > max_frame
    if k == 4:
        return msgpack.packb(rng.choice([7, "s", {"a": 1}, [], [0], [5, 1, 2],
                                         [1, 2, None, None]]))
    if k == 5:
        return msgpack.packb([0, rng.randrange(2**32), 42, []])   # bad method
    if k == 6:
        return msgpack.packb([0, rng.randrange(2**32), "echo.echo", "notarray"])
    if k == 7:
        return msgpack.packb([0, rng.randrange(2**32), "no.such." + "z" * 500,
                              []])
    if k == 8:
        return msgpack.packb([2, "sleep.sleep", ["x"]])          # bad notify
    return os.urandom(rng.randrange(1, 200))                    # noise


def hostile(seed, count, stats):
    rng = random.Random(seed)
    sent = 0
    while sent < count:
        s = None
        stats["conns"] += 1
        try:
            s = dial(handshake=not TLS or rng.random() >= 0.15)
            # a few messages per connection, then read a little or vanish
            for _ in range(rng.randrange(1, 20)):
                s.sendall(bad_messages(rng))
                sent += 1
            if rng.random() < 0.3:
                # calls in flight, then an abrupt disconnect
                s.sendall(b"".join(msgpack.packb([0, i, "sleep.sleep", [5]])
                                   for i in range(50)))
            elif rng.random() < 0.5:
                try:
                    s.settimeout(0.05)
                    s.recv(65536)
                except (socket.timeout, OSError):
                    pass
        except OSError:
            stats["conn_errors"] += 1
            sent += 1           # (a garbage handshake ends in an error)
        finally:
            if s is not None:
                s.close()


def main():
    global ADDR, CTX
    d = tempfile.mkdtemp(prefix="demux-t.")
    conf = os.path.join(d, "demux.yaml")
    if TLS:
        basic(d)
        p = socket.socket()
        p.bind(("127.0.0.1", 0))
        ADDR = p.getsockname()
        p.close()
        CTX = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
        CTX.check_hostname = False
        listen = ('listen: "tls:127.0.0.1:%d"\ntls:\n  cert: server.crt\n'
                  "  key: server.key\n" % ADDR[1])
    else:
        ADDR = os.path.join(d, "demux.sock")
        listen = 'listen: "unix:demux.sock"\n'
    with open(conf, "w") as f:
        f.write(listen + "workers: 4\nmax_frame: 64KiB\n"
                "plugins:\n  - name: echo\n    path: %s/plugins/echo.so\n"
                "  - name: sleep\n    path: %s/plugins/sleep.so\n"
                % (BUILD, BUILD))
    srv = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                           stderr=subprocess.PIPE, text=True)
    track(srv)
    for line in srv.stderr:             # READY: it accepts connections
        if "READY" in line:
            break
    try:
        threading.Thread(target=lambda: [None for _ in srv.stderr],
                         daemon=True).start()
        good = dial(30)
        rss0 = rss_kb(srv.pid)

        stop = threading.Event()
        good_stats = {"calls": 0, "bad": 0, "during": 0}

        def good_client():
            u = msgpack.Unpacker(raw=False)
            i = 0
            while not stop.is_set() or good_stats["calls"] < 20:
                i += 1
                payload = "good-%d" % i
                # a call made while the attack runs counts as "during"
                # even when the answer comes after it (on a loaded machine
                # the shared pool may answer late, but must answer right)
                during = not stop.is_set()
                good.sendall(msgpack.packb([0, i, "echo.echo", [payload]]))
                got = None
                while got is None:
                    data = good.recv(65536)
                    if not data:
                        good_stats["bad"] += 1
                        good_stats["why"] = "EOF after %d calls" % i
                        return
                    u.feed(data)
                    for m in u:
                        got = m
                if got != [1, i, None, [payload]]:
                    good_stats["bad"] += 1
                    good_stats["why"] = "call %d got %r" % (i, got)
                good_stats["calls"] += 1
                if during:
                    good_stats["during"] += 1
        gt = threading.Thread(target=good_client)
        gt.start()

        stats = {"conn_errors": 0, "conns": 0}
        hs = [threading.Thread(target=hostile,
                               args=(seed, 1250, stats))
              for seed in range(8)]
        [h.start() for h in hs]

        # abrupt disconnects with thousands of calls in flight
        def abrupt():
            for _ in range(4):
                a = dial()
                a.sendall(b"".join(msgpack.packb([0, i, "sleep.sleep", [0]])
                                   for i in range(3000)))
                a.close()
        ab = threading.Thread(target=abrupt)
        ab.start()
        [h.join() for h in hs]
        ab.join()
        diag("%d hostile connections, %d ended in an error" %
             (stats["conns"], stats["conn_errors"]))
        stop.set()
        gt.join()

        ok(srv.poll() is None, "demuxd is still running after 10,000 "
           "hostile messages on many connections and 4 abrupt disconnects "
           "with 3000 calls in flight each")
        ok(good_stats["bad"] == 0 and good_stats["during"] > 0,
           "the good client's %d calls (%d during the attack) all answered "
           "correctly%s" % (good_stats["calls"], good_stats["during"],
                            (" (%s)" % good_stats["why"])
                            if "why" in good_stats else ""))
        rss1 = rss_kb(srv.pid)
        if os.environ.get("T_DEBUG"):
            os.system("grep -E 'Rss|Size' /proc/%d/smaps_rollup; "
                      "awk '/^[0-9a-f]+-/ {r=$0} /^Rss:/ && $2 > 4096 "
                      "{print r, $2}' /proc/%d/smaps" % (srv.pid, srv.pid))
        if os.environ.get("SAN_FLAGS"):
            # a sanitizer's quarantine keeps freed memory (TLS buffers
            # churn): report only, as the C tests do
            diag("RSS %d kB -> %d kB (under a sanitizer: not asserted)"
                 % (rss0, rss1))
        else:
            ok(rss1 - rss0 < 64 * 1024, "demuxd's memory stayed bounded "
               "(RSS %d kB -> %d kB)" % (rss0, rss1))
        # hostile connections close once their answers are out and their
        # last jobs finish: watch $/stats until only ours is left
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        conns = None
        for i in range(2000):
            good.sendall(msgpack.packb([0, 10**6 + i, "$/stats", []]))
            st = None
            while st is None:
                u.feed(good.recv(1 << 20))
                for m in u:
                    st = m
            conns = st[3]["server"]["connections"]
            if conns <= 1:
                break
            threading.Event().wait(0.01)
        ok(conns == 1, "every abandoned connection was cleaned up (%d open)"
           % conns)
        good.close()
    finally:
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
            srv.wait(60)
    ok(srv.returncode == 0, "demuxd exits 0 on SIGTERM (status %r)"
       % srv.returncode)
    done_testing()


signal.alarm(240)
main()
