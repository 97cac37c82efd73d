#!/usr/bin/python3
# recipe-python.t - the recipe's own test (../shared/seed: _test), with its
# handler in Python: a module whose process_transaction sleeps like the
# recipe's MyDeMux, driven by 700 threads each making 3 calls and 1 that
# raises, over ONE connection, with a pool of 100 and then on-demand.
# Durations are the recipe's divided by 100 (3, 2, 1 s -> 30, 20, 10 ms)
# so that the suite stays short; what is checked is every answer.
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
from mux import Mux, RemoteError  # noqa: E402
sys.path.insert(0, HERE)
from tap import done_testing, ok, watchdog  # noqa: E402
from pyhandlers import Server  # noqa: E402

watchdog(240)

MYDEMUX = '''
import threading, time

def process_transaction(method, message_before, duration, message_after):
    """One transaction is just a call to sleep (the recipe's MyDeMux)."""
    if duration < 0:
        raise IOError("negative duration %r" % duration)
    time.sleep(duration)
    return [message_before, threading.get_ident(), message_after]
'''


def run(label, pool):
    s = Server(pool + '''plugins:
  - name: recipe
    path: @PY@
    config: { module: mydemux, path: handlers }
''', {"mydemux": MYDEMUX})
    ok(s.start(), "%s: demuxd starts" % label)
    mux = Mux(s.uri)
    good, bad, raised, badraise = [0], [], [0], []
    lock = threading.Lock()

    def submitter():
        for before, dur, after in (("msg1", 0.03, "msg2"),
                                   ("msg3", 0.02, "msg4"),
                                   ("msg5", 0.01, "msg6")):
            try:
                r = mux.transaction("recipe.transaction", before, dur, after)
                if r[0] == before and r[2] == after:
                    with lock:
                        good[0] += 1
                else:
                    bad.append(r)
            except Exception as e:
                bad.append(e)
        try:
            mux.transaction("recipe.transaction", "msgE", -1, "msgEE")
            badraise.append("no exception")
        except RemoteError as e:
            if (e.code == 1 and e.message == "OSError: negative duration "
                    "-1" and e.trace and "raise IOError" in e.trace):
                with lock:
                    raised[0] += 1
            else:
                badraise.append(e)
        except Exception as e:
            badraise.append(e)

    t0 = time.monotonic()
    ths = [threading.Thread(target=submitter) for _ in range(700)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.monotonic() - t0
    ok(good[0] == 2100 and not bad, "%s: 700 threads x 3 calls on one "
       "connection: all 2100 answers right (%d; %d wrong: %r) in %.2f s"
       % (label, good[0], len(bad), bad[:2], dt))
    ok(raised[0] == 700 and not badraise, "%s: ...and the 700 that raise "
       "arrive as [1, 'OSError: negative duration -1', traceback] (%d; "
       "%r)" % (label, raised[0], badraise[:2]))
    mux.close()
    ok(s.stop() == 0, "%s: demuxd stops cleanly" % label)


run("pool of 100", "workers: 100\n")
run("on-demand", "workers: on-demand\nmax_threads: 1024\n")
done_testing()
