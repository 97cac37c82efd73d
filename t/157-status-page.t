#!/usr/bin/python3
# 157-status-page.t - the status page (GET / on the metrics: listener) in
# a real browser: Debian's chromium, headless, against a live demuxd under
# load. Checks the rendered DOM (a row per method, numbers that change
# between two loads, the charts and the histogram drawn), that
# /stats.json is $/stats as JSON, that the page names no outside resource,
# that a draining server shows "draining", and that access rules that
# refuse anonymous $/stats refuse the page. Screenshots (1280x800 and a
# phone's width) go to build/t/. Skipped only without chromium.
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from tap import BUILD, diag, done_testing, ok, track, watchdog  # noqa: E402
from mux import Mux  # noqa: E402

watchdog(150)
CHROMIUM = "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    print("1..0 # SKIP chromium not installed (Debian package chromium)")
    sys.exit(0)
D = tempfile.mkdtemp(prefix="demux-t.")


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(name, extra=""):
    mport = port()
    conf = os.path.join(D, name + ".yaml")
    with open(conf, "w") as f:
        f.write('listen: "unix:%s.sock"\nmetrics: "tcp:127.0.0.1:%d"\n'
                "workers: 4\ndrain_timeout_ms: 20000\n%s"
                "plugins:\n  - name: echo\n    path: %s/plugins/echo.so\n"
                "  - name: sleep\n    path: %s/plugins/sleep.so\n"
                % (name, mport, extra, BUILD, BUILD))
    p = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                         stderr=subprocess.PIPE, text=True)
    track(p)
    for line in p.stderr:
        if "READY" in line:
            break
    threading.Thread(target=lambda: [None for _ in p.stderr],
                     daemon=True).start()
    return p, "http://127.0.0.1:%d" % mport, "unix:" + os.path.join(
        D, name + ".sock")


def browse(url, *args):
    """The DOM chromium renders after ~3 s of the page's (virtual) time."""
    r = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox",
                        "--disable-gpu", "--no-first-run",
                        "--user-data-dir=" + os.path.join(D, "chrome"),
                        "--virtual-time-budget=3500", *args, url],
                       capture_output=True, text=True, timeout=90)
    return r.stdout


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


srv, web, uri = start("a")
try:
    code, ctype, body = get(web + "/stats.json")
    st = json.loads(body)
    m = Mux(uri)
    ok(code == 200 and ctype == "application/json" and
       set(st) == set(m.transaction("$/stats")),
       "/stats.json is $/stats as JSON (%s)" % sorted(st))
    code, ctype, page = get(web + "/")
    ok(code == 200 and ctype.startswith("text/html"), "GET / serves the "
       "page as HTML")
    outside = re.findall(rb'(?:src|href)=["\'](?:https?:)?//', page)
    ok(not outside and b"<script src" not in page and b"@import" not in
       page, "...self-contained: no outside script, font or stylesheet")

    # under load
    stop = threading.Event()

    def load():
        while not stop.is_set():
            m.transaction("echo.echo", 1)
    th = [threading.Thread(target=load) for _ in range(2)]
    [t.start() for t in th]
    try:
        m.transaction("sleep.sleep", -5)
    except Exception:
        pass                            # an error, counted by code
    dom1 = browse(web + "/", "--dump-dom")
    dom2 = browse(web + "/", "--dump-dom")
    rows = dict(re.findall(r'<tr data-method="([^"]+)" data-calls="(\d+)"',
                           dom1))
    ok(set(rows) == {"echo.echo", "sleep.sleep"}, "the rendered page has a "
       "row for every method (%s)" % sorted(rows))
    rows2 = dict(re.findall(r'<tr data-method="([^"]+)" data-calls="(\d+)"',
                            dom2))
    ok(int(rows2.get("echo.echo", 0)) > int(rows.get("echo.echo", 0)) > 0,
       "...whose numbers change between two loads (%s -> %s calls)" %
       (rows.get("echo.echo"), rows2.get("echo.echo")))
    ok(dom1.count('<svg class="spark"') == 2 and
       "<polyline" in dom1, "...a chart per method")
    ok(re.search(r'<svg id="hist"[^>]*>.*<rect', dom1, re.S) is not None,
       "...and the selected method's latency histogram")
    ok('id="state" class="badge serving">serving<' in dom1, "...the "
       "server's state")
    ok("1: 1" in dom1, "...and errors by code (sleep.sleep's 1)")
    ok(re.search(r'<tr data-plugin="echo"><td>echo</td><td>thread</td>',
                 dom1) is not None, "...and the pools, per plugin")
    shot = os.path.join(BUILD, "t", "status-page.png")
    browse(web + "/", "--screenshot=" + shot, "--window-size=1280,800",
           "--hide-scrollbars")
    ok(os.path.getsize(shot) > 10000, "a 1280x800 screenshot: %s" % shot)
    phone = os.path.join(BUILD, "t", "status-page-phone.png")
    browse(web + "/", "--screenshot=" + phone, "--window-size=390,844")
    ok(os.path.getsize(phone) > 5000, "...and one at a phone's width: %s"
       % phone)
    stop.set()
    [t.join() for t in th]

    # draining: a call in flight holds the drain open
    slow = threading.Thread(target=lambda: Mux(uri).transaction(
        "sleep.sleep", 4000))
    slow.start()
    while st["server"]["state"] == "serving" and \
            m.transaction("$/stats")["methods"]["sleep.sleep"]["in_flight"] \
            == 0:
        threading.Event().wait(0.01)    # until the sleep is in flight
    srv.send_signal(signal.SIGTERM)
    while json.loads(get(web + "/stats.json")[2])["server"]["state"] != \
            "draining":
        threading.Event().wait(0.01)
    dom = browse(web + "/", "--dump-dom")
    ok('class="badge draining">draining<' in dom, "a draining server's "
       "page says draining")
    slow.join()
    ok(srv.wait(30) == 0, "demuxd stops cleanly")
finally:
    if srv.poll() is None:
        srv.kill()

# access rules that do not let anonymous call $/stats: no page either
srv, web, uri = start("b", 'access:\n  - identity: "*"\n    allow: '
                      '[ "echo.*" ]\n')
try:
    code, _, body = get(web + "/")
    code2, _, _ = get(web + "/stats.json")
    ok(code == 403 and code2 == 403, "with access rules refusing anonymous "
       "$/stats, / and /stats.json answer 403 (%s)" % body.strip()[:80])
finally:
    srv.send_signal(signal.SIGTERM)
    ok(srv.wait(30) == 0, "demuxd stops cleanly")
done_testing()
