"""recipe.py - the recipe demux comes from (../shared/seed), ported to
Python 3 as it stands, to be measured as a peer: Mux.transaction() from
many threads over one channel, DeMux.process_transaction() on its own pool
of threads (or a thread per request), pickle framing with a 4-byte length.

Changes from the original, all mechanical: Python 3 names (queue, pickle,
print), threading.Event() without a lock argument, and recv() reads the
length and the body in loops (over a socket, unlike a pipe, os.read may
return less than asked even for 4 bytes). The design is untouched: one
lock around the wait table, one write lock, a pickle per message.
"""
import os
import pickle
import queue
import select
import struct
import sys
import threading
import itertools
import traceback

SENTINEL = "QUIT"


def is_sentinel(obj):
    return type(obj) is str and obj == SENTINEL


class ReceiverThread(threading.Thread):
    def __init__(self, channel):
        threading.Thread.__init__(self, daemon=True)
        self._channel = channel
        self.__terms = os.pipe()
        self._recv = channel.recv
        self._send = channel.send

    def run(self):
        fd = self._channel.fileno()
        waitset = select.poll()
        mask = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLPRI
        waitset.register(fd, mask)
        waitset.register(self.__terms[0], mask)
        while 1:
            exit_loop = False
            for fd_, evt in waitset.poll():
                if fd_ != fd or evt != select.POLLIN:
                    exit_loop = True
                    break
            if exit_loop:
                break
            try:
                data = self._recv()
            except (EOFError, OSError):
                break
            try:
                self.handle_message(data)
            except Exception:
                traceback.print_exc()

    def handle_message(self, message):
        raise NotImplementedError

    def stop(self):
        os.write(self.__terms[1], b"TERMINATION")
        self.join()
        self._channel.close()


class Mux(ReceiverThread):
    def __init__(self, channel):
        ReceiverThread.__init__(self, channel)
        self.__lock = threading.Lock()
        self.__waitq = dict()
        self.__idgen = itertools.count(42)

    def transaction(self, *args, **kwds):
        evt = threading.Event()
        with self.__lock:
            xid = next(self.__idgen)
            self.__waitq[xid] = [evt, None]
        self._send((xid, args, kwds))
        evt.wait()
        with self.__lock:
            result = self.__waitq.pop(xid)[1]
        xid_, (status, details) = result
        if status == "OK":
            return details
        raise details

    def handle_message(self, msg):
        xid, result = msg
        with self.__lock:
            slot = self.__waitq[xid]
            slot[1] = msg
            slot[0].set()


class DeMux(ReceiverThread):
    def __init__(self, channel, nworkers=None):
        ReceiverThread.__init__(self, channel)
        self.__nworkers = nworkers
        self.__lock = threading.Lock()
        if nworkers is not None:
            self.__workers = []
            self.__workq = queue.Queue()
            for _ in range(nworkers):
                thr = threading.Thread(target=self._pool_work, daemon=True)
                self.__workers.append(thr)
                thr.start()
        else:
            self.__workers = dict()

    def handle_message(self, msg):
        xid, args, kwds = msg
        if self.__nworkers is not None:
            self.__workq.put((xid, args, kwds))
        else:
            thr = threading.Thread(target=self._do_process_transaction,
                                   args=(xid,) + args, kwargs=kwds,
                                   daemon=True)
            with self.__lock:
                self.__workers[xid] = thr
            thr.start()

    def _pool_work(self):
        while 1:
            data = self.__workq.get()
            if is_sentinel(data):
                break
            xid, args, kwds = data
            self._do_process_transaction(xid, *args, **kwds)

    def _do_process_transaction(self, xid, *args, **kwds):
        try:
            result = ("OK", self.process_transaction(*args, **kwds))
        except Exception as ex:
            ex._trace = traceback.format_exc()
            result = ("EXCEPTION", ex)
        self._send((xid, result))
        if self.__nworkers is None:
            with self.__lock:
                del self.__workers[xid]

    def process_transaction(self, *args, **kwds):
        raise NotImplementedError


class SimpleChannelEndpoint:
    SZI = struct.calcsize('I')

    def __init__(self, fd_r, fd_w):
        self._fd_r = fd_r
        self._fd_w = fd_w
        self._wlock = threading.Lock()

    def fileno(self):
        return self._fd_r

    def _read(self, n):
        b = b""
        while len(b) < n:
            chunk = os.read(self._fd_r, n - len(b))
            if not chunk:
                raise EOFError("channel closed")
            b += chunk
        return b

    def send(self, data):
        sdata = pickle.dumps(data)
        sdata = struct.pack('I', len(sdata)) + sdata
        with self._wlock:
            os.write(self._fd_w, sdata)

    def recv(self):
        (expected,) = struct.unpack('I', self._read(self.SZI))
        return pickle.loads(self._read(expected))

    def close(self):
        with self._wlock:
            try:
                os.close(self._fd_w)
            except OSError:
                pass
        if self._fd_r != self._fd_w:
            os.close(self._fd_r)
