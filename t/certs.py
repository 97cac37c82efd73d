"""certs.py - test certificates made with the openssl command (imported by
the TLS tests, or run as `certs.py DIR` by the C tests).

    certs = Certs(tempfile.mkdtemp())
    certs.ca("ca"); certs.cert("server", "demux-server-1", "ca",
                               "IP:127.0.0.1")

Each name gives NAME.crt and NAME.key (EC P-256) in the directory. Run as a
program it makes the set the C tests use: ca, server (for 127.0.0.1) and
client (CN billing-1, from ca).
"""
import os
import subprocess
import sys


class Certs:
    def __init__(self, d):
        self.d = d

    def path(self, name):
        return os.path.join(self.d, name)

    def _sh(self, *args):
        subprocess.run(args, check=True, cwd=self.d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _req(self, name, cn, *more):
        self._sh("openssl", "req", *more, "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 name + ".key", "-out", name + (".crt" if more else ".csr"),
                 "-subj", "/CN=" + cn, *(("-days", "2") if more else ()))

    def ca(self, name):
        """A self-signed CA, NAME.crt and NAME.key."""
        self._req(name, name, "-x509")

    def cert(self, name, cn, ca, san=None):
        """A certificate for cn signed by ca, valid two days."""
        self._req(name, cn)
        ext = []
        if san:
            with open(self.path(name + ".ext"), "w") as f:
                f.write("subjectAltName=%s\n" % san)
            ext = ["-extfile", name + ".ext"]
        self._sh("openssl", "x509", "-req", "-in", name + ".csr", "-CA",
                 ca + ".crt", "-CAkey", ca + ".key", "-CAcreateserial",
                 "-out", name + ".crt", "-days", "2", *ext)

    def expired(self, name, cn, ca):
        """A certificate of ca that expired in 2020 (openssl ca can
        backdate, x509 -req cannot)."""
        self._req(name, cn)
        os.makedirs(self.path("db"), exist_ok=True)
        open(self.path("db/index"), "w").close()
        with open(self.path("db/serial"), "w") as f:
            f.write("01\n")
        with open(self.path("ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca=d\n[d]\ndatabase=db/index\n"
                    "serial=db/serial\nnew_certs_dir=db\ndefault_md=sha256\n"
                    "policy=p\n[p]\ncommonName=supplied\n")
        self._sh("openssl", "ca", "-batch", "-config", "ca.cnf", "-cert",
                 ca + ".crt", "-keyfile", ca + ".key", "-in", name + ".csr",
                 "-out", name + ".crt", "-startdate", "20200101000000Z",
                 "-enddate", "20200102000000Z")


def basic(d):
    """ca, server (for 127.0.0.1), client (billing-1): what most need."""
    c = Certs(d)
    c.ca("ca")
    c.cert("server", "demux-server-1", "ca", "IP:127.0.0.1")
    c.cert("client", "billing-1", "ca")
    return c


if __name__ == "__main__":
    basic(sys.argv[1])
