#!/usr/bin/python3
"""report.py RESULTS_DIR [IMG_DIR] - demux against its peers, from one run.

Reads RESULTS_DIR/raw.txt (the RESULT lines of one ../shared/peers/run.sh run
that included demux's cases) and RESULTS_DIR/memory.txt (bench/mux_mem), and
prints markdown: the targets of issue 3 with demux's ratio to the best peer
and to the raw ceiling measured in the SAME run, the memory figures, and the
full table of medians. With IMG_DIR, also draws with gnuplot (PNG and SVG):
throughput against client threads, and p99 latency against load.
"""
import os
import shutil
import statistics
import subprocess
import sys
from collections import OrderedDict

PEERS = ("nng", "nng-aio", "zmq", "grpc")


def parse(path):
    rows = OrderedDict()
    with open(path) as f:
        for line in f:
            if line.startswith("RESULT "):
                kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
                rows.setdefault(kv["label"], []).append(kv)
    return rows


def med(runs, k):
    vals = [float(r[k]) for r in runs if k in r and float(r[k]) >= 0]
    return statistics.median(vals) if vals else float("nan")


def cell(runs, k):
    return med(runs, k) if runs else float("nan")


class Results:
    def __init__(self, rows):
        self.rows = rows

    def get(self, label):
        return self.rows.get(label, [])

    def peers(self, workload):
        """(label, runs) of every peer (not demux, raw, redis) for a workload."""
        out = []
        for label, runs in self.rows.items():
            p = label.split(",")
            if len(p) == 3 and p[0] in PEERS and p[2] == workload:
                out.append((label, runs))
        return out

    def best(self, workload, key, lowest=False):
        cands = [(cell(r, key), l) for l, r in self.peers(workload)]
        cands = [c for c in cands if c[0] == c[0]]
        if not cands:
            return float("nan"), "-"
        return (min if lowest else max)(cands)


def fmt(x, nd=0):
    if x != x:
        return "-"
    return f"{x:,.{nd}f}"


def ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


def verdict(ok):
    if ok is None:
        return "-"
    return "met" if ok else "**missed**"


def targets(R, out):
    w = R.get
    rows = []
    # W1 throughput and CPU
    d = w("demux,unix,W1")
    d_tx = cell(d, "txps")
    b_tx, b_l = R.best("W1", "txps")
    r = ratio(d_tx, b_tx)
    rows.append(("W1 tx/s (32 threads, 64 B)", fmt(d_tx), f"{fmt(b_tx)} ({b_l})",
                 f"{r:.2f}x", ">= 3x", verdict(r >= 3 if r == r else None)))
    d_cpu = cell(d, "cli_cpu_us_tx") + cell(d, "srv_cpu_us_tx")
    cpus = [(cell(rr, "cli_cpu_us_tx") + cell(rr, "srv_cpu_us_tx"), l)
            for l, rr in R.peers("W1")]
    cpus = [c for c in cpus if c[0] == c[0]]
    b_cpu, b_cl = min(cpus) if cpus else (float("nan"), "-")
    r = ratio(d_cpu, b_cpu)
    rows.append(("W1 CPU µs/tx, client + server", fmt(d_cpu, 2),
                 f"{fmt(b_cpu, 2)} ({b_cl})", f"{r:.2f}x", "<= 0.33x",
                 verdict(r <= 1 / 3 if r == r else None)))
    # W1 through the async API: the same 32 calls in flight, kept by one
    # client thread with mux_call_async (informative: W1's target is set
    # for 32 blocking threads)
    d = w("demux,unix,W1-async")
    if d:
        a_tx = cell(d, "txps")
        r = ratio(a_tx, b_tx)
        rows.append(("W1 tx/s, async API (32 in flight, 1 thread)", fmt(a_tx),
                     f"{fmt(b_tx)} ({b_l})", f"{r:.2f}x", "(W1: >= 3x)", "-"))
        a_cpu = cell(d, "cli_cpu_us_tx") + cell(d, "srv_cpu_us_tx")
        r = ratio(a_cpu, b_cpu)
        rows.append(("W1 CPU µs/tx, async API", fmt(a_cpu, 2),
                     f"{fmt(b_cpu, 2)} ({b_cl})", f"{r:.2f}x", "(W1: <= 0.33x)",
                     "-"))
    # W1-lat
    d = w("demux,unix,W1-lat")
    raw = w("raw,unix,W1-lat")
    d_p50, raw_p50 = cell(d, "p50_us"), cell(raw, "p50_us")
    b_p50, b_l = R.best("W1-lat", "p50_us", lowest=True)
    r = ratio(d_p50, raw_p50)
    rows.append(("W1-lat p50 µs (1 thread)", fmt(d_p50, 1),
                 f"{fmt(b_p50, 1)} ({b_l}); raw {fmt(raw_p50, 1)}",
                 f"{r:.2f}x raw", "<= 1.5x raw", verdict(r <= 1.5 if r == r else None)))
    # W2
    d = w("demux,unix,W2")
    d_mb = cell(d, "MBps")
    b_mb, b_l = R.best("W2", "MBps")
    raw_mb = cell(w("raw-batch,unix,W2-k8"), "MBps")
    r1, r2 = ratio(d_mb, b_mb), ratio(d_mb, raw_mb)
    rows.append(("W2 MB/s (8 threads, 64 KiB)", fmt(d_mb, 1),
                 f"{fmt(b_mb, 1)} ({b_l}); raw {fmt(raw_mb, 1)}",
                 f"{r1:.2f}x peer, {r2:.2f}x raw", ">= 1.5x peer, >= 0.5x raw",
                 verdict(r1 >= 1.5 and r2 >= 0.5 if r1 == r1 and r2 == r2 else None)))
    # W2 with the results_in_place option (large results not copied)
    d = w("demux,unix,W2-inplace")
    if d:
        d_mb = cell(d, "MBps")
        r1, r2 = ratio(d_mb, b_mb), ratio(d_mb, raw_mb)
        rows.append(("W2 MB/s, results_in_place", fmt(d_mb, 1),
                     f"{fmt(b_mb, 1)} ({b_l}); raw {fmt(raw_mb, 1)}",
                     f"{r1:.2f}x peer, {r2:.2f}x raw", ">= 1.5x peer, >= 0.5x raw",
                     verdict(r1 >= 1.5 and r2 >= 0.5 if r1 == r1 and r2 == r2 else None)))
    # W3
    for phase in ("cold", "warm"):
        d = w(f"demux,unix,W3-{phase}")
        wall = cell(d, "wall_ms")
        eff = 210.0 / wall if wall == wall and wall else float("nan")
        peffs = []
        for l, rr in R.peers(f"W3-{phase}"):
            pw = cell(rr, "wall_ms")
            if pw == pw and pw:
                peffs.append((210.0 / pw, l))
        b_eff, b_l = max(peffs) if peffs else (float("nan"), "-")
        rows.append((f"W3 efficiency ({phase})", fmt(eff, 3), f"{fmt(b_eff, 3)} ({b_l})",
                     f"wall {fmt(wall, 1)} ms", ">= 0.97",
                     verdict(eff >= 0.97 if eff == eff else None)))
    # W4
    d = w("demux,unix,W4-k1024")
    d_tx = cell(d, "txps")
    redis = max((cell(w(l), "txps"), l) for l in
                ("redis,unix,ping-c32-P16", "redis,tcp,ping-c32-P16"))
    rawh = cell(w("raw-handoff-batch,unix,max-k1024"), "txps")
    r = ratio(d_tx, redis[0])
    rows.append(("W4 tx/s (1024 in flight)", fmt(d_tx), f"{fmt(redis[0])} ({redis[1]}); "
                 f"raw hand-off batch {fmt(rawh)}", f"{r:.2f}x Redis", ">= 1x Redis",
                 verdict(r >= 1 if r == r else None)))
    # isolation: process beside thread mode, in the same run
    dp, dt = w("demux,unix,W1-process"), w("demux,unix,W1")
    if dp and dt:
        p_tx, t_tx = cell(dp, "txps"), cell(dt, "txps")
        r = ratio(p_tx, t_tx)
        rows.append(("W1 tx/s, isolation: process", fmt(p_tx),
                     f"thread mode {fmt(t_tx)}", f"{r:.2f}x thread",
                     ">= 0.6x thread", verdict(r >= 0.6 if r == r else None)))
    dp, dt = w("demux,unix,W1-lat-process"), w("demux,unix,W1-lat")
    if dp and dt:
        p50, t50 = cell(dp, "p50_us"), cell(dt, "p50_us")
        r = ratio(p50, t50)
        rows.append(("W1-lat p50 µs, isolation: process", fmt(p50, 1),
                     f"thread mode {fmt(t50, 1)}", f"{r:.2f}x thread",
                     "<= 1.5x thread", verdict(r <= 1.5 if r == r else None)))
    # TLS beside TCP, the same run
    for wl, key, unit in (("W1", "txps", "tx/s"), ("W2", "MBps", "MB/s")):
        dt, dp = w("demux,tls," + wl), w("demux,tcp," + wl)
        if dt and dp:
            a, b = cell(dt, key), cell(dp, key)
            r = ratio(a, b)
            rows.append((f"{wl} {unit} over TLS", fmt(a, 1 if key == "MBps" else 0),
                         f"tcp {fmt(b, 1 if key == 'MBps' else 0)}", f"{r:.2f}x tcp",
                         ">= 0.8x tcp" if wl == "W1" else "-",
                         verdict(r >= 0.8 if r == r else None) if wl == "W1" else "-"))
    # demux's TLS cost against Redis's, each against its own TCP
    tls_ratio = {}
    for wl in ("W1",):
        dt, dp = w("demux,tls," + wl), w("demux,tcp," + wl)
        if dt and dp:
            tls_ratio["demux"] = ratio(cell(dt, "txps"), cell(dp, "txps"))
    for rl in ("ping-c32", "set-c32-d64"):
        rt, rp = w("redis,tls," + rl), w("redis,tcp," + rl)
        if rt and rp:
            a, b = cell(rt, "txps"), cell(rp, "txps")
            r = ratio(a, b)
            d = tls_ratio.get("demux", float("nan"))
            rows.append((f"Redis {rl} tx/s over TLS", fmt(a), f"tcp {fmt(b)}",
                         f"{r:.2f}x tcp (demux W1: {d:.2f}x)",
                         "demux's TLS/TCP better",
                         verdict(d > r if d == d and r == r else None)))
    dh, rh = w("demux,tls,handshakes"), w("redis,tls,handshakes")
    if dh:
        a, b = cell(dh, "txps"), cell(rh, "txps") if rh else float("nan")
        rows.append(("full TLS handshakes/s (2 clients)", fmt(a),
                     f"Redis {fmt(b)}", f"{ratio(a, b):.2f}x Redis; server "
                     f"{fmt(cell(dh, 'srv_cpu_us_tx'))} µs/handshake (Redis "
                     f"{fmt(cell(rh, 'srv_cpu_us_tx')) if rh else '-'})",
                     "(reported)", "-"))
    # the access check on the fast path: W4 with a 10-rule access: section
    da, dn = w("demux,unix,W4-k1024-access"), w("demux,unix,W4-k1024")
    if da and dn:
        a, b = cell(da, "txps"), cell(dn, "txps")
        r = ratio(a, b)
        rows.append(("W4 tx/s with 10 access rules", fmt(a),
                     f"without {fmt(b)}", f"{r:.2f}x", ">= 0.95x (noise)",
                     verdict(r >= 0.95 if r == r else None)))
    # Python handlers (the python plugin) beside C ones and the recipe
    dpy, dc, rc = w("demux,unix,W1-python"), w("demux,unix,W1"), \
        w("recipe,unix,W1")
    if dpy and dc:
        a, b = cell(dpy, "txps"), cell(dc, "txps")
        r = ratio(a, b)
        rows.append(("W1 tx/s, Python handler (echo in Python)", fmt(a),
                     f"C echo plugin {fmt(b)}", f"{r:.2f}x C",
                     ">= 0.5x C", verdict(r >= 0.5 if r == r else None)))
    if dpy and rc:
        a, b = cell(dpy, "txps"), cell(rc, "txps")
        r = ratio(a, b)
        rows.append(("W1 tx/s, Python handler vs the recipe itself", fmt(a),
                     f"recipe (Python 3 port) {fmt(b)}", f"{r:.2f}x recipe",
                     ">= 10x recipe", verdict(r >= 10 if r == r else None)))
    for phase in ("cold", "warm"):
        d, rr = w(f"demux,unix,W3-python-{phase}"), w(f"recipe,unix,W3-{phase}")
        if not d:
            continue
        wall = cell(d, "wall_ms")
        eff = 210.0 / wall if wall == wall and wall else float("nan")
        rw = cell(rr, "wall_ms") if rr else float("nan")
        reff = 210.0 / rw if rw == rw and rw else float("nan")
        rows.append((f"W3 efficiency, Python time.sleep handler ({phase})",
                     fmt(eff, 3), f"recipe {fmt(reff, 3)}",
                     f"wall {fmt(wall, 1)} ms", ">= 0.95",
                     verdict(eff >= 0.95 if eff == eff else None)))
    out.append("| target | demux | best peer (and ceiling) | ratio | goal | |")
    out.append("|---|---|---|---|---|---|")
    for row in rows:
        out.append("| " + " | ".join(row) + " |")


def memory(path, out):
    if not os.path.exists(path):
        return
    out.append("")
    out.append("| memory | figure | goal | |")
    out.append("|---|---|---|---|")
    with open(path) as f:
        for line in f:
            if not line.startswith("RESULT "):
                continue
            kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
            if kv.get("mem") == "idle":
                mb = float(kv["rss_after_kb"]) / 1024
                out.append(f"| demuxd RSS with {kv['conns']} idle connections | "
                           f"{mb:.1f} MB ({kv['bytes_per_conn']} B per connection) | "
                           f"< 100 MB | {verdict(mb < 100)} |")
            elif kv.get("mem") == "inflight":
                ov = float(kv["overhead_per_request"])
                out.append(f"| overhead per request, {kv['requests']} in flight on one "
                           f"connection ({kv['payload']} B payload) | {ov:.0f} B | "
                           f"a few hundred B | {verdict(ov <= 400)} |")


def full_table(R, out):
    hdr = ["peer", "transport", "workload", "T", "payload B", "tx/s", "MB/s",
           "p50 µs", "p99 µs", "cli CPU µs/tx", "srv CPU µs/tx", "wall ms", "runs"]
    out.append("")
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "|".join("---" for _ in hdr) + "|")
    for label, runs in R.rows.items():
        p = (label.split(",") + ["", "", ""])[:3]
        size = int(runs[0]["size"])
        errs = sum(int(r.get("errors", "0")) for r in runs)
        out.append("| " + " | ".join([
            p[0], p[1], p[2] + (f" (errors {errs})" if errs else ""), runs[0]["T"],
            str(size), fmt(med(runs, "txps")),
            fmt(med(runs, "MBps"), 1) if size >= 1024 else "-",
            fmt(med(runs, "p50_us"), 1), fmt(med(runs, "p99_us"), 1),
            fmt(med(runs, "cli_cpu_us_tx"), 2), fmt(med(runs, "srv_cpu_us_tx"), 2),
            fmt(med(runs, "wall_ms"), 1) if int(runs[0].get("ncalls", "0")) else "-",
            str(len(runs))]) + " |")


def curves(R, img):
    """Points (T, tx/s, p99) per system, from the W1, W1-lat, C-T* (the
    peers) and W1-T* (demux: 1 to 256 threads) rows; a W1-T* row stands
    for the W1 or W1-lat row of the same T."""
    series = OrderedDict()
    for sysname, tr in (("demux", "unix"), ("zmq", "ipc"), ("nng", "ipc"),
                        ("grpc", "unix")):
        pts = {}
        for label, runs in R.rows.items():
            p = label.split(",")
            if len(p) != 3 or p[0] != sysname or p[1] != tr:
                continue
            curve = p[2].startswith("C-T") or p[2].startswith("W1-T")
            if p[2] in ("W1", "W1-lat") or curve:
                t = int(runs[0]["T"])
                if curve or t not in pts:
                    pts[t] = (t, med(runs, "txps"), med(runs, "p99_us"))
        if pts:
            series[sysname] = sorted(pts.values())
    if not series or shutil.which("gnuplot") is None:
        return []
    os.makedirs(img, exist_ok=True)
    data = {}
    for name, pts in series.items():
        fn = os.path.join(img, f".curve-{name}.dat")
        with open(fn, "w") as f:
            for t, tx, p99 in pts:
                f.write(f"{t} {tx} {p99}\n")
        data[name] = fn
    made = []
    for ext, term in (("png", "pngcairo size 900,560 font 'sans,11'"),
                      ("svg", "svg size 900,560 font 'sans,11'")):
        for kind in ("throughput", "latency"):
            outf = os.path.join(img, f"{kind}.{ext}")
            if kind == "throughput":
                head = ["set title 'Echo 64 B over ONE connection, 4 workers: throughput'",
                        "set xlabel 'client threads (calls in flight)'",
                        "set ylabel 'transactions per second'",
                        "set logscale x 2", "set format y '%.0s%c'"]
                cols = "1:2"
            else:
                head = ["set title 'Echo 64 B over ONE connection: p99 latency against load'",
                        "set xlabel 'transactions per second'",
                        "set ylabel 'p99 latency (µs)'", "set logscale y",
                        "set format x '%.0s%c'"]
                cols = "2:3"
            plots = ", ".join(f"'{fn}' using {cols} with linespoints lw 2 title '{n}'"
                              for n, fn in data.items())
            script = "\n".join([f"set terminal {term}", f"set output '{outf}'",
                                "set grid", "set key top left"] + head +
                               [f"plot {plots}"]) + "\n"
            r = subprocess.run(["gnuplot"], input=script, text=True,
                               capture_output=True)
            if r.returncode == 0:
                made.append(outf)
            else:
                sys.stderr.write(r.stderr)
    for fn in data.values():
        os.unlink(fn)
    return made


def crash(path, out):
    """The cost of one crash of a process-mode plugin (bench/mux_crash)."""
    if not os.path.exists(path):
        return
    for line in open(path):
        if not line.startswith("RESULT crash"):
            continue
        kv = dict(f.split("=", 1) for f in line.split()[2:] if "=" in f)
        out.append("")
        out.append("| one crash (isolation: process, %s crashes) | median | worst |"
                   % kv.get("n", "?"))
        out.append("|---|---|---|")
        out.append("| SIGSEGV to the -32014 answer (one round trip included) | "
                   "%s µs | %s µs |" % (kv.get("answer_p50_us"), kv.get("answer_max_us")))
        out.append("| -32014 to the respawned child's first answered call "
                   "(respawn_min_ms 1) | %s µs | %s µs |"
                   % (kv.get("respawn_p50_us"), kv.get("respawn_max_us")))


def main():
    d = sys.argv[1]
    img = sys.argv[2] if len(sys.argv) > 2 else None
    R = Results(parse(os.path.join(d, "raw.txt")))
    out = []
    machine = os.path.join(d, "machine.txt")
    if os.path.exists(machine):
        out.append("```")
        out.extend(open(machine).read().strip().splitlines())
        out.append("```")
        out.append("")
    targets(R, out)
    memory(os.path.join(d, "memory.txt"), out)
    crash(os.path.join(d, "crash.txt"), out)
    full_table(R, out)
    if img:
        made = curves(R, img)
        if made:
            out.append("")
            out.append("Plots: " + ", ".join(os.path.basename(m) for m in made))
    print("\n".join(out))


if __name__ == "__main__":
    main()
