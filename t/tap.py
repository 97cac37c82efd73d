"""tap.py - TAP helpers for the Python tests (imported, not a test itself).

    from tap import ok, done_testing, BUILD, rss_kb
    ok(cond, "what it proves")
    done_testing()          # prints the plan, exits 1 if a check failed
"""
import os
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


def done_testing():
    if _n == 0:
        print("not ok 1 - BUG: test made no checks\n1..1", flush=True)
        sys.exit(1)
    print("1..%d" % _n, flush=True)
    sys.exit(1 if _failed else 0)
