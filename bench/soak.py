#!/usr/bin/env python3
"""bench/soak.py -- kill -9 soak: posthorn is killed every 3-7 s under load,
and no message it acknowledged may be lost.

A posthorn satellite relays to a counting SMTP sink (in this script). For
DURATION seconds (default 600):
  - SESSIONS (16) client threads send messages over SMTP, each with a unique
    X-Soak-Id header; a message counts as accepted when its DATA got 250;
  - every 3-7 s the daemon gets SIGKILL; while it is down, `sendmail` is run
    a few times (messages that sendmail took, exit 0, count as accepted too);
    then the daemon is started again on the same spool and port.
At the end the daemon is started once more and left until its queue is
empty. Printed: accepted (SMTP, sendmail), delivered (distinct ids at the
sink), lost (accepted but never delivered: must be 0), duplicated (ids
delivered more than once: the at-least-once window of a kill during a
delivery), and the number of kills.

usage: bench/soak.py [DURATION_SECONDS]
env:   POSTHORN_BIN (default: build target/release/posthorn), SESSIONS=16,
       KEEP=1 keeps the work directory.
"""
import collections
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0
SESSIONS = int(os.environ.get("SESSIONS", "16"))
SOAK_ID = re.compile(rb"^X-Soak-Id: (\S+)", re.M | re.I)


def posthorn_bin():
    if os.environ.get("POSTHORN_BIN"):
        return os.environ["POSTHORN_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    print("building release posthorn ...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    return os.path.join(target, "release", "posthorn")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A minimal SMTP server that counts the X-Soak-Id of every message."""

    def __init__(self):
        self.seen = collections.Counter()
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            conn, _ = self.server.accept()
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        f = conn.makefile("rwb")
        def reply(line):
            f.write(line + b"\r\n")
            f.flush()
        try:
            reply(b"220 soak-sink ESMTP")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    reply(b"250-soak-sink\r\n250-PIPELINING\r\n250 8BITMIME")
                elif verb == b"DATA":
                    reply(b"354 go on")
                    data = []
                    while True:
                        l = f.readline()
                        if not l or l == b".\r\n":
                            break
                        data.append(l)
                    m = SOAK_ID.search(b"".join(data))
                    if m:
                        with self.lock:
                            self.seen[m.group(1).decode()] += 1
                    reply(b"250 2.0.0 kept")
                elif verb == b"QUIT":
                    reply(b"221 2.0.0 bye")
                    return
                else:
                    reply(b"250 2.0.0 ok")
        except OSError:
            pass
        finally:
            conn.close()


class Daemon:
    def __init__(self, binary, work, sink_port):
        self.binary, self.work = binary, work
        self.port = free_port()
        self.config = os.path.join(work, "posthorn.toml")
        with open(self.config, "w") as f:
            f.write(f"""role = "satellite"
user = "root"
hostname = "soak.test"
spool = "{work}/spool"

[smtp]
listen = ["127.0.0.1:{self.port}"]

[relay]
smarthosts = ["127.0.0.1:{sink_port}"]
tls = "none"

[queue]
retry_min = "1s"
retry_max = "2s"
""")
        self.proc = None
        self.starts = 0

    def start(self):
        log = open(os.path.join(self.work, f"posthorn-{self.starts}.log"), "wb")
        self.starts += 1
        self.proc = subprocess.Popen([self.binary, "serve", "-c", self.config], stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"posthorn exited at start: see {log.name}")
                time.sleep(0.02)
        raise SystemExit("posthorn did not listen within 30 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def sendmail(self, soak_id):
        msg = f"From: app@soak.test\nTo: ops@example.org\nX-Soak-Id: {soak_id}\nSubject: dropped\n\nbody\n"
        r = subprocess.run([self.binary, "sendmail", "-f", "app@soak.test", "ops@example.org"],
                           input=msg.encode(), capture_output=True, timeout=30,
                           env=dict(os.environ, POSTHORN_CONFIG=self.config))
        return r.returncode == 0

    def queued(self):
        spool = os.path.join(self.work, "spool")
        return sum(len(os.listdir(os.path.join(spool, d))) for d in ("incoming", "active", "deferred"))


def client(daemon, stop, accepted, counter, lock):
    """One session after another; a refused or cut session just starts again."""
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as s:
                for _ in range(20):
                    if stop.is_set():
                        return
                    with lock:
                        counter[0] += 1
                        soak_id = f"smtp-{counter[0]}"
                    msg = f"From: app@soak.test\nTo: ops@example.org\nX-Soak-Id: {soak_id}\nSubject: soak\n\n" + "x" * 900 + "\n"
                    s.sendmail("app@soak.test", ["ops@example.org"], msg)
                    with lock:
                        accepted.append(soak_id)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def main():
    binary = posthorn_bin()
    work = tempfile.mkdtemp(prefix="posthorn-soak.", dir="/var/tmp")
    sink = Sink()
    daemon = Daemon(binary, work, sink.port)
    daemon.start()
    stop = threading.Event()
    accepted, dropped, counter, lock = [], [], [0], threading.Lock()
    threads = [threading.Thread(target=client, args=(daemon, stop, accepted, counter, lock)) for _ in range(SESSIONS)]
    for t in threads:
        t.start()
    kills, t0 = 0, time.time()
    while time.time() - t0 < DURATION:
        time.sleep(random.uniform(3, 7))
        daemon.kill9()
        kills += 1
        for _ in range(3):
            soak_id = f"drop-{kills}-{len(dropped)}"
            if daemon.sendmail(soak_id):
                dropped.append(soak_id)
        daemon.start()
    stop.set()
    for t in threads:
        t.join()
    # Drain: until the queue is empty, or nothing has left it for 60 s.
    last, since = daemon.queued(), time.time()
    while last > 0 and time.time() - since < 60:
        time.sleep(1)
        now_queued = daemon.queued()
        if now_queued < last:
            since = time.time()
        last = now_queued
    time.sleep(2)
    daemon.proc.terminate()
    daemon.proc.wait()
    with sink.lock:
        seen = dict(sink.seen)
    wanted = accepted + dropped
    # Only a drained queue tells lost from not yet delivered.
    left = daemon.queued()
    lost = [i for i in wanted if i not in seen] if left == 0 else []
    duplicated = sum(1 for n in seen.values() if n > 1)
    print(f"duration        {DURATION:.0f} s, {SESSIONS} sessions, {kills} kill -9")
    print(f"accepted        {len(wanted)} ({len(accepted)} by SMTP, {len(dropped)} by sendmail while down)")
    print(f"delivered       {len(seen)} distinct ids")
    if left:
        print(f"lost            unknown: {left} still queued when the drain stalled")
    else:
        print(f"lost            {len(lost)}" + (f"  e.g. {lost[:5]}" if lost else ""))
    print(f"duplicated      {duplicated}")
    print(f"left queued     {left}")
    if os.environ.get("KEEP") == "1":
        print(f"work directory  {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if lost or left else 0


if __name__ == "__main__":
    sys.exit(main())
