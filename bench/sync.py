#!/usr/bin/python3
"""bench/sync.py -- latency of the ways a spool can make one message durable,
on the filesystem of DIR (issue 18, item 2).

Each round stores one message alone (no other writer: what a single SMTP
session waits for) the way each option would, and the median and 90th
percentile of the round's wall time are printed:

  current     body and envelope written to data/ and tmp/, syncfs, rename
              tmp/ENV -> incoming/ENV, fsync tmp/ and incoming/ (the commit
              path before issue 18)
  one-dir     the same, fsync of incoming/ only (the name leaving tmp/
              need not be durable: recovery sweeps tmp/)
  per-file    fdatasync body and envelope, fsync data/, rename, fsync
              incoming/ (Postfix's way; queue.sync = "per-file")
  syncfs-only body and envelope written, renamed, one syncfs (one journal
              commit; the ordering body-before-name then rests on ext4's
              data=ordered, not on POSIX)
  log         one record appended to a single log file, fdatasync (a
              log-structured spool's commit)

usage: bench/sync.py [DIR] [ROUNDS]     (default /var/tmp, 300)
"""

import ctypes
import os
import statistics
import sys
import tempfile
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def syncfs(fd):
    if libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path, data, sync=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


BODY = b"x" * 1024
ENV = b"e" * 300


def current(root, n, fs, one_dir=False):
    write(f"{root}/data/{n}", BODY)
    write(f"{root}/tmp/{n}", ENV)
    syncfs(fs)
    os.rename(f"{root}/tmp/{n}", f"{root}/incoming/{n}")
    if not one_dir:
        fsync_dir(f"{root}/tmp")
    fsync_dir(f"{root}/incoming")


def per_file(root, n, fs):
    write(f"{root}/data/{n}", BODY, sync=True)
    write(f"{root}/tmp/{n}", ENV, sync=True)
    fsync_dir(f"{root}/data")
    os.rename(f"{root}/tmp/{n}", f"{root}/incoming/{n}")
    fsync_dir(f"{root}/incoming")


def syncfs_only(root, n, fs):
    write(f"{root}/data/{n}", BODY)
    write(f"{root}/tmp/{n}", ENV)
    os.rename(f"{root}/tmp/{n}", f"{root}/incoming/{n}")
    syncfs(fs)


class Log:
    def __init__(self, root):
        self.fd = os.open(f"{root}/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def __call__(self, root, n, fs):
        os.write(self.fd, BODY + ENV)
        os.fdatasync(self.fd)


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    with tempfile.TemporaryDirectory(dir=base, prefix="posthorn-sync.") as root:
        for d in ("data", "tmp", "incoming"):
            os.mkdir(f"{root}/{d}")
        fs = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        log = Log(root)
        options = [
            ("current", lambda r, n, f: current(r, n, f)),
            ("one-dir", lambda r, n, f: current(r, n, f, one_dir=True)),
            ("per-file", per_file),
            ("syncfs-only", syncfs_only),
            ("log", log),
        ]
        times = {name: [] for name, _ in options}
        # Interleaved, so that a burst of load elsewhere hits every option.
        for i in range(rounds):
            for name, option in options:
                n = f"{name}-{i}"
                t0 = time.perf_counter()
                option(root, n, fs)
                times[name].append(time.perf_counter() - t0)
        print(f"one message alone, {rounds} rounds, on {base} ({os.uname().release})")
        print(f"{'option':<12} {'median ms':>10} {'p90 ms':>8} {'msg/s alone':>12}")
        for name, _ in options:
            t = sorted(times[name])
            median = statistics.median(t)
            print(f"{name:<12} {median * 1000:10.3f} {t[int(len(t) * 0.9)] * 1000:8.3f} {1 / median:12.0f}")


if __name__ == "__main__":
    main()
