#!/usr/bin/python3
# 400-python.t - Python handlers (plugins/python): every type mapping both
# ways, exceptions with and without code, demux.Error, an unencodable
# result, two instances with different modules, process_transaction as the
# catch-all, demux.config and demux.log, cancellation seen from Python,
# timeouts, the GIL released while a handler sleeps, import errors at start
# and at reload, a module changed and reloaded under load with zero failed
# calls, and a handler in process mode that aborts the interpreter.
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from mux import Mux, RemoteError, Timeout  # noqa: E402
sys.path.insert(0, HERE)
from tap import done_testing, ok, watchdog  # noqa: E402
from pyhandlers import Server  # noqa: E402
import msgpack  # noqa: E402

watchdog(120)

CALC = '''
import os, time
import demux
from os.path import join          # imported: not a method

def echo(*args):
    return list(args)

def back(x):
    return x

def pair():
    return (1, "two")             # a tuple goes as an array

def big():
    return 2 ** 64                # outside int64 and uint64

def weird():
    return object()

def boom(msg):
    raise ValueError(msg)

class Coded(Exception):
    code = 7

def coded():
    raise Coded("with a code attribute")

def answer():
    raise demux.Error(42, "the answer")

def conf():
    return demux.config

def say(msg):
    demux.log("warn", "said: " + msg)
    return True

def slow(ms):
    time.sleep(ms / 1000)
    return ms

def nap(ms):
    time.sleep(ms / 1000)
    return ms

CANCELS = []

def cancels():
    return len(CANCELS)

def wait_cancel(ms):
    t0 = time.monotonic()
    while time.monotonic() - t0 < ms / 1000:
        if demux.cancelled():
            CANCELS.append(1)
            raise demux.Error(9, "saw demux.cancelled()")
        time.sleep(0.005)
    return "not cancelled"

def version():
    return 1

def _private():
    return "hidden"
'''

TEXT = '''
__all__ = ["upper"]
def upper(s):
    return s.upper()
def lower(s):              # not in __all__
    return s.lower()
def process_transaction(method, *params):
    return ["caught", method, list(params)]
'''

s = Server('''workers: 120
plugins:
  - name: calc
    path: @PY@
    config: { module: calc, path: handlers, greeting: hi }
    methods: { slow: { timeout_ms: 300 } }
  - name: text
    path: @PY@
    config: { module: textops, path: handlers }
''', {"calc": CALC, "textops": TEXT})
ok(s.start(), "demuxd starts with two instances of python.so") or \
    print("# " + "# ".join(s.lines))
try:
    m = Mux(s.uri)
    meths = m.transaction("$/methods")
    ok("calc.echo" in meths and "calc.join" not in meths and
       "calc._private" not in meths and "calc.Coded" not in meths,
       "methods: the module's own public functions (not imported ones, "
       "classes or _private)")
    ok("text.upper" in meths and "text.lower" not in meths and
       "text.*" in meths, "...or __all__; process_transaction as text.*")

    vals = [None, True, False, 0, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1,
            1.5, "h\u00e9llo", b"\x00\xffbin", [1, [2, [3]]],
            {"a": 1, 1: "int key", "n": None},
            msgpack.ExtType(5, b"ext")]
    got = m.transaction("calc.echo", *vals)
    ok(got == vals, "every type goes in and comes back: nil, bool, int "
       "(int64 and uint64 limits), float, str, bin, array, map with "
       "non-string keys, ext: %r" % (got,))
    ok(m.transaction("calc.back", [1, (2, 3)]) == [1, [2, 3]],
       "arrays inside arrays")
    ok(m.transaction("calc.pair") == [1, "two"], "a tuple returned is "
       "sent as an array")
    for meth, code, needle in (
            ("calc.big", -32603, "int outside the int64/uint64 range"),
            ("calc.weird", -32603, "type object"),
            ("calc.coded", 7, "Coded: with a code attribute"),
            ("calc.answer", 42, "Error: the answer")):
        try:
            m.transaction(meth)
            e = None
        except RemoteError as ex:
            e = ex
        ok(e is not None and e.code == code and needle in e.message,
           "%s answers %d %r" % (meth, code, e and e.message))
    try:
        m.transaction("calc.boom", "bad input")
        e = None
    except RemoteError as ex:
        e = ex
    ok(e is not None and e.code == 1 and e.message == "ValueError: bad "
       "input" and e.trace and "Traceback (most recent call last)" in
       e.trace and 'raise ValueError(msg)' in e.trace,
       "an exception answers [1, 'ValueError: bad input', its traceback]")
    ok(m.transaction("calc.conf") == {"module": "calc", "path": "handlers",
                                       "greeting": "hi"},
       "demux.config is this plugin's YAML config")
    said = m.transaction("calc.say", "hello")
    t0 = time.monotonic()     # the log is read on another thread
    while (not any("said: hello" in line for line in s.lines) and
           time.monotonic() - t0 < 5):
        time.sleep(0.01)
    ok(said is True and any("said: hello" in line for line in s.lines),
       "demux.log reaches demuxd's log")
    ok(m.transaction("text.upper", "abc") == "ABC", "the second instance "
       "serves its own module")
    ok(m.transaction("text.frob", 1, "x") == ["caught", "frob", [1, "x"]],
       "process_transaction(method, *params) takes every other text.NAME")
    try:
        m.transaction("calc.nothing")
        e = None
    except RemoteError as ex:
        e = ex
    ok(e is not None and e.code == -32601, "...but a plugin without one "
       "answers -32601 for an unknown name")

    t0 = time.monotonic()
    c = m.submit("calc.wait_cancel", 5000)
    time.sleep(0.1)
    c.cancel()
    try:
        m.transaction("$/ping")
        r = c.wait(5)
    except Exception as ex:
        r = ex
    n = 0
    while n == 0 and time.monotonic() - t0 < 3:
        n = m.transaction("calc.cancels")
    ok(n == 1 and time.monotonic() - t0 < 3, "$/cancelRequest: "
       "demux.cancelled() turned true in the running Python handler, "
       "which gave up (%r)" % (r,))
    try:
        m.transaction("calc.slow", 2000)
        e = None
    except RemoteError as ex:
        e = ex
    ok(e is not None and e.code == -32011, "timeout_ms 300: -32011 (%s)"
       % (e and e.message))

    # the GIL is released while handlers sleep
    res = []
    t0 = time.monotonic()

    def sleeper():
        res.append(m.transaction("calc.back", 0) == 0 and
                   m.transaction("calc.nap", 200) == 200)
    ths = [threading.Thread(target=sleeper) for _ in range(100)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.monotonic() - t0
    # (a sanitizer slows every call; serialised it would still be 20 s)
    limit = 6.0 if (os.environ.get("SAN_FLAGS") or
                    os.environ.get("DEMUX_VALGRIND") == "1") else 2.0
    ok(len(res) == 100 and all(res) and dt < limit, "100 concurrent "
       "time.sleep(0.2) on 100 workers: all done in %.2f s (serialised "
       "they would take 20 s)" % dt)

    # reload under load: the answers switch over, no call fails
    stop = threading.Event()
    seen, fails = set(), []

    def loader():
        mm = Mux(s.uri)
        while not stop.is_set():
            try:
                seen.add(mm.transaction("calc.version"))
            except Exception as ex:
                fails.append(ex)
        mm.close()
    ths = [threading.Thread(target=loader) for _ in range(4)]
    for t in ths:
        t.start()
    time.sleep(0.2)
    s.write("calc", CALC.replace("return 1", "return 2"))
    s.reload()
    t0 = time.monotonic()
    while 2 not in seen and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    time.sleep(0.2)
    stop.set()
    for t in ths:
        t.join()
    ok(seen == {1, 2} and not fails, "the module changed and SIGHUP: "
       "answers switch from 1 to 2 under load, %d failed calls" %
       len(fails))
    ok(m.transaction("calc.version") == 2, "...and stay switched")

    # an import error at reload is refused; the old module serves on
    s.write("calc", "def version(:\n")
    before = sum("reload" in line and "refused" in line or
                 "SyntaxError" in line for line in s.lines)
    s.reload()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        if any("SyntaxError" in line for line in s.lines):
            break
        time.sleep(0.01)
    time.sleep(0.1)
    ok(any("SyntaxError" in line for line in s.lines) and
       m.transaction("calc.version") == 2,
       "a module that does not import refuses the reload, naming the "
       "Python error; the old one serves on")
    m.close()
finally:
    rc = s.stop()
    ok(rc == 0, "demuxd stops cleanly") or print(
        "# exit %r; " % rc + "# ".join(s.lines[-30:]))

# an import error at start: exit 2, with the traceback in the message
bad = Server('''plugins:
  - name: bad
    path: @PY@
    config: { module: broken, path: handlers }
''', {"broken": "import os\nraise RuntimeError('cannot start here')\n"})
rc, err = bad.check()
ok(rc == 2 and "RuntimeError: cannot start here" in err and
   "broken.py" in err, "an exception at import stops demuxd (exit 2) with "
   "the Python error and where it was raised: %r" % err[-300:])
missing = Server('''plugins:
  - name: nope
    path: @PY@
    config: { module: nosuchmodule, path: handlers }
''', {})
rc, err = missing.check()
ok(rc == 2 and "ModuleNotFoundError" in err and "nosuchmodule" in err,
   "a module that is not there: exit 2, ModuleNotFoundError")

# process mode: a handler that aborts the interpreter ends its child only
ab = Server('''plugins:
  - name: ab
    path: @PY@
    isolation: process
    workers: 4
    config: { module: aborting, path: handlers }
''', {"aborting": "import os\ndef die():\n    os.abort()\n"
                  "def pid():\n    return os.getpid()\n"
                  "def version():\n    return 1\n"})
ok(ab.start(), "a Python plugin in process mode starts")
try:
    m = Mux(ab.uri)
    p1 = m.transaction("ab.pid")
    try:
        m.transaction("ab.die")
        e = None
    except RemoteError as ex:
        e = ex
    ok(e is not None and e.code == -32014, "os.abort() in a handler: "
       "-32014 (%s)" % (e and e.message))
    p2 = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        try:
            p2 = m.transaction("ab.pid")
            break
        except RemoteError:
            time.sleep(0.05)
    ok(p2 is not None and p2 != p1 and p1 != os.getpid(),
       "...and a new child serves the next call (pid %s -> %s)" % (p1, p2))
    ab.write("aborting", "import os\ndef pid():\n    return os.getpid()\n"
             "def version():\n    return 2\n")
    ab.reload()
    v = None
    t0 = time.monotonic()
    while v != 2 and time.monotonic() - t0 < 10:
        try:
            v = m.transaction("ab.version")
        except RemoteError:
            pass
        time.sleep(0.02)
    p3 = m.transaction("ab.pid")
    ok(v == 2 and p3 != p2, "in process mode a changed module gets a new "
       "child on SIGHUP (version %r, pid %s -> %s)" % (v, p2, p3))
    m.close()
finally:
    ok(ab.stop() == 0, "demuxd stops cleanly")
done_testing()
