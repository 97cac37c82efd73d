#!/usr/bin/python3
"""server.py -u unix:PATH [-W workers] [-S usec]: the recipe's DeMux on one
accepted connection (the recipe serves one wire), its handler an echo or a
sleep of usec (W3), like the peers' servers. Prints READY; serves until
the connection closes, then waits for the next one."""
import getopt
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe import DeMux, SimpleChannelEndpoint  # noqa: E402

opts, _ = getopt.getopt(sys.argv[1:], "u:W:S:")
o = dict(opts)
path = o["-u"][5:]
workers = int(o.get("-W", "4"))
sleep_s = int(o.get("-S", "0")) / 1e6


class Echo(DeMux):
    def process_transaction(self, *args):
        if sleep_s:
            time.sleep(sleep_s)
        return args


try:
    os.unlink(path)
except OSError:
    pass
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(path)
ls.listen(8)
print("READY", flush=True)
while True:
    conn, _ = ls.accept()
    fd = conn.detach()
    d = Echo(SimpleChannelEndpoint(fd, fd), workers)
    d.start()
    d.join()
