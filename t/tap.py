"""tap.py - TAP helpers for the Python tests (imported, not a test itself).

    from tap import ok, done_testing, BUILD, rss_kb, watchdog
    watchdog(60)            # a hung test fails instead of stalling the suite
    ok(cond, "what it proves")
    done_testing()          # prints the plan, exits 1 if a check failed
"""
import atexit
import os
import signal
import sys

BUILD = os.path.abspath(os.environ.get("BUILD", "build"))
_n = 0
_failed = 0


def ok(cond, desc):
    """One check; returns cond."""
    global _n, _failed
    _n += 1
    if not cond:
        _failed += 1
    print("%sok %d - %s" % ("" if cond else "not ", _n, desc), flush=True)
    return cond


def diag(msg):
    print("# " + str(msg).replace("\n", "\n# "), flush=True)


def rss_kb(pid):
    """VmRSS of a process, in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


_children = []


def _kill_children():
    for p in _children:
        try:
            if p.poll() is None:
                p.kill()
                p.wait()
        except OSError:
            pass


# also when the test dies of an exception: a server left running would hold
# the harness's pipe open and hang the whole suite
atexit.register(_kill_children)


def track(proc):
    """Kill this child process (a Popen) when the test exits, however it
    exits, or when the watchdog fires."""
    _children.append(proc)


def watchdog(seconds):
    """Fail the test, killing its tracked children, after `seconds`."""
    def fire(signum, frame):
        print("not ok - watchdog: still running after %d s" % seconds,
              flush=True)
        _kill_children()
        os._exit(1)
    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


def start_demuxd(yaml, log=None, preexec_fn=None):
    """Write yaml (its unix paths relative to a fresh folder) and start
    BUILD/demuxd on it; returns (proc, folder) once it logged READY. The
    lines it logs afterwards are appended to log (a list), if given. The
    process is tracked: killed when the test exits, however it exits."""
    import subprocess
    import tempfile
    import threading
    d = tempfile.mkdtemp(prefix="demux-t.")
    conf = os.path.join(d, "demux.yaml")
    with open(conf, "w") as f:
        f.write(yaml)
    p = subprocess.Popen([BUILD + "/demuxd", "-c", conf],
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=preexec_fn)
    track(p)
    for line in p.stderr:
        if "READY" in line:
            break
    sink = log if log is not None else []
    threading.Thread(target=lambda: [sink.append(x) for x in p.stderr]
                     if log is not None else [None for _ in p.stderr],
                     daemon=True).start()
    return p, d


def stop_demuxd(p, d):
    """SIGTERM, wait, remove the folder; returns the exit status."""
    import shutil
    p.send_signal(signal.SIGTERM)
    rc = p.wait(60)
    shutil.rmtree(d, ignore_errors=True)
    return rc


def done_testing():
    if _n == 0:
        print("not ok 1 - BUG: test made no checks\n1..1", flush=True)
        sys.exit(1)
    print("1..%d" % _n, flush=True)
    sys.exit(1 if _failed else 0)
