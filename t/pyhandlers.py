"""pyhandlers.py - starting demuxd with Python handler modules, for the
t/4*-python tests (imported, not a test itself)."""
import os
import signal
import subprocess
import tempfile
import threading

from tap import BUILD, track


class Server:
    """demuxd on a fresh folder holding handlers/*.py and demux.yaml."""

    def __init__(self, yaml, modules, check_only=False):
        self.dir = tempfile.mkdtemp(prefix="demux-t.")
        os.mkdir(os.path.join(self.dir, "handlers"))
        for name, src in modules.items():
            self.write(name, src)
        self.conf = os.path.join(self.dir, "demux.yaml")
        with open(self.conf, "w") as f:
            f.write('listen: "unix:demux.sock"\n' +
                    yaml.replace("@PY@", BUILD + "/plugins/python.so"))
        self.uri = "unix:" + os.path.join(self.dir, "demux.sock")
        self.lines = []
        self.proc = None

    def write(self, name, src):
        path = os.path.join(self.dir, "handlers", name + ".py")
        with open(path, "w") as f:
            f.write(src)
        # a change must be seen even within one mtime tick
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000000))

    def check(self):
        """demuxd --check: (exit status, its stderr)."""
        p = subprocess.run([BUILD + "/demuxd", "--check", "-c", self.conf],
                           stderr=subprocess.PIPE, text=True)
        return p.returncode, p.stderr

    def start(self):
        """Start and wait for READY; returns True, or False if it exited.
        DEMUX_VALGRIND=1: under valgrind (make valgrind), CPython's own
        reports suppressed (t/valgrind-python.supp)."""
        cmd = [BUILD + "/demuxd", "-c", self.conf]
        env = dict(os.environ)
        if os.environ.get("DEMUX_VALGRIND") == "1":
            supp = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "valgrind-python.supp")
            # on-demand mode runs up to max_threads (1024) at once:
            # past valgrind's default of 500
            cmd = ["valgrind", "--quiet", "--leak-check=full",
                   "--max-threads=2100",
                   "--show-leak-kinds=definite,indirect",
                   "--errors-for-leak-kinds=definite,indirect",
                   "--error-exitcode=99", "--suppressions=" + supp] + cmd
            env["PYTHONMALLOC"] = "malloc"
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                     env=env)
        track(self.proc)
        for line in self.proc.stderr:
            self.lines.append(line)
            if "READY" in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return True
        return False

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)
