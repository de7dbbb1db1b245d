"""Benchmark driver for scripts/bench: Tandem and Dovecot side by side, same machine, same run.

Both servers run on loopback with their default durability; every workload runs against
both, alternating which goes first from run to run, and each figure is the median of the
runs. The output is one Markdown table (Dovecot, Tandem, how many times better Tandem is,
the goal and whether it is met), and with `--json FILE` the same data as JSON.
docs/benchmarks.md explains the workloads, the Dovecot setup and the latest results.

Adding a workload: write one function `wl_NAME(bench, peer, run) -> {row key: value}` and
list it in `WORKLOADS` with its rows. A workload whose two sides are not the two servers
(the audit, against b3sum) gives its own `sides`.

Everything is bounded: every socket read has a timeout, every loop a count, every wait a
deadline; all traffic goes to 127.0.0.1. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import harness  # noqa: E402  (free ports, readiness probe, parent-death signal)

HOST = "127.0.0.1"
PASSWORD = "bench-pw"
SEED = 7
IO_TIMEOUT_S = 120.0  # per socket read; a FETCH of 1 GB streams, it never waits this long
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CMD_TIMEOUT_S = 1800.0  # one external command (tandem audit, b3sum, user add)
LINE_BYTES_MAX = 16 << 20
RESPONSES_MAX = 10_000_000  # untagged responses to one command; far above any workload here
LITERAL_CHUNK = 1 << 20

# Tokens the SEARCH workloads look for; the corpus puts them in a known subset of messages.
SUBJECT_TOKEN = "zebracorn"
BODY_TOKEN = "quokkafern"


# --------------------------------------------------------------------------------------
# sizes of a run


@dataclass(frozen=True)
class Counts:
    lmtp: int  # messages per LMTP delivery run
    mailbox: int  # messages in the big mailbox the IMAP workloads read
    store: int  # messages one STORE command changes
    store_single: int  # single-message STORE commands
    append: int  # APPENDs per run
    idle: int  # idle authenticated IMAP connections
    select_repeats: int  # SELECTs per run (fresh connection each)
    runs: int
    sessions: int = 500  # idle sessions in the per-session memory workloads
    session_mailbox: int = 6000  # messages in the mailbox those sessions select
    idle_many: int = 2000  # sessions in IDLE at once
    qresync_mailbox: int = 50000  # messages in the mailbox of the QRESYNC reconnect
    qresync_changed: int = 100  # messages whose flags change while the client is away


FULL = Counts(lmtp=5000, mailbox=20000, store=10000, store_single=1000, append=1000,
              idle=1000, select_repeats=5, runs=3)
QUICK = Counts(lmtp=300, mailbox=1000, store=500, store_single=100, append=100,
               idle=50, select_repeats=3, runs=1, sessions=50, session_mailbox=600,
               idle_many=200, qresync_mailbox=2000, qresync_changed=20)


# --------------------------------------------------------------------------------------
# the messages


WORDS = """the of and to in is that for it as was with be by on not he this are or his from at
which but have an they you were her all she there would their we him been has when who will
more no if out so said what up its about into than them can only other new some could time
these two may then do first any my now such like our over man me even most made after also
did many before must through back years where much your way well down should because each
just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great
old year off come since against go came right used take three meeting invoice project report
budget schedule review draft agenda quarterly release server storage mailbox delivery backup
customer support account password network update status weekly monthly summary attached
please thanks regards question answer follow during office team plan""".split()

FIRST_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
               "judy", "mallory", "oscar", "peggy", "trent", "victor", "walter"]


def wrap(words: list[str], width: int = 72) -> bytes:
    """Words into CRLF lines of at most `width` characters (no line starts with a dot)."""
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        lines.append(cur)
    return ("\r\n".join(lines) + "\r\n").encode()


class Corpus:
    """Deterministic mail: message `i` is the same bytes on every machine and every run.

    Sizes are log-uniform between 2 KB and 200 KB (most mail is small, a few messages are
    large: the median is ~20 KB, the mean ~43 KB). A quarter of the messages above 8 KB are
    multipart/mixed with a base64 attachment, the rest text/plain. Message `i` has
    SUBJECT_TOKEN in its subject when i % 100 == 7 and BODY_TOKEN in its text when
    i % 97 == 3, so every SEARCH has a known answer."""

    SIZE_MIN = 2_000
    SIZE_MAX = 200_000

    def __init__(self, seed: int):
        self.seed = seed
        rng = random.Random(f"{seed}:paragraphs")
        self.paragraphs = [
            wrap([rng.choice(WORDS) for _ in range(rng.randint(30, 150))]) + b"\r\n"
            for _ in range(512)
        ]

    @staticmethod
    def subject_hit(i: int) -> bool:
        return i % 100 == 7

    @staticmethod
    def body_hit(i: int) -> bool:
        return i % 97 == 3

    def text(self, rng: random.Random, size: int, token: bool) -> bytes:
        parts, n = [], 0
        for _ in range(10_000):  # bounded: 10,000 paragraphs of >= 150 bytes > SIZE_MAX
            if n >= size:
                break
            p = self.paragraphs[rng.randrange(len(self.paragraphs))]
            parts.append(p)
            n += len(p)
        if token:
            parts.insert(rng.randrange(len(parts) + 1), wrap(["see", BODY_TOKEN, "below"]))
        return b"".join(parts)

    def message(self, i: int, to: str = "bench@example.com") -> bytes:
        rng = random.Random(f"{self.seed}:{i}")
        size = int(math.exp(rng.uniform(math.log(self.SIZE_MIN), math.log(self.SIZE_MAX))))
        sender = rng.choice(FIRST_NAMES)
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        if self.subject_hit(i):
            subject += " " + SUBJECT_TOKEN
        date = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
            seconds=600 * i % (3 * 365 * 86400))
        head = [
            f"Return-Path: <{sender}@example.org>",
            f"From: {sender.title()} <{sender}@example.org>",
            f"To: <{to}>",
            f"Subject: {subject}",
            f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
            f"Message-ID: <{i}.{self.seed}@bench.example.org>",
            "MIME-Version: 1.0",
        ]
        if rng.random() < 0.3:
            head.append(f"Cc: {rng.choice(FIRST_NAMES)}@example.net, {rng.choice(FIRST_NAMES)}@example.com")
        body_hit = self.body_hit(i)
        if size > 8_000 and rng.random() < 0.25:
            text_size = rng.randint(500, 4_000)
            raw = rng.randbytes(max(1, (size - text_size) * 3 // 4))
            b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
            boundary = f"=_bench_{i}"
            head.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
            body = b"".join([
                b"This is a multi-part message in MIME format.\r\n\r\n",
                f"--{boundary}\r\n".encode(),
                b"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
                self.text(rng, text_size, body_hit),
                f"--{boundary}\r\n".encode(),
                f'Content-Type: application/octet-stream; name="data{i}.bin"\r\n'.encode(),
                b"Content-Transfer-Encoding: base64\r\n",
                f'Content-Disposition: attachment; filename="data{i}.bin"\r\n\r\n'.encode(),
                b64,
                f"--{boundary}--\r\n".encode(),
            ])
        else:
            head.append("Content-Type: text/plain; charset=us-ascii")
            body = self.text(rng, size - 400, body_hit)
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def messages(self, start: int, count: int, to: str = "bench@example.com") -> list[bytes]:
        return [self.message(start + k, to) for k in range(count)]


# --------------------------------------------------------------------------------------
# protocol clients (lean: the client shares the machine's 2 cores with the server)


class ProtocolError(Exception):
    pass


class Lmtp:
    """One LMTP connection; one recipient per transaction, no pipelining (like an MTA
    that delivers each message as it comes)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        self.expect(220, "greeting")
        self.cmd(b"LHLO bench.example.org", 250)

    def reply(self) -> tuple[int, bytes]:
        for _ in range(1000):  # bounded multi-line reply
            line = self.f.readline(LINE_BYTES_MAX)
            if not line:
                raise ProtocolError("LMTP server closed the connection")
            if line[3:4] != b"-":
                return int(line[:3]), line
        raise ProtocolError("LMTP reply of more than 1000 lines")

    def expect(self, code: int, what: str) -> None:
        got, line = self.reply()
        if got != code:
            raise ProtocolError(f"LMTP {what}: expected {code}, got {line!r}")

    def cmd(self, line: bytes, code: int) -> None:
        self.sock.sendall(line + b"\r\n")
        self.expect(code, line.split()[0].decode())

    def deliver(self, rcpt: str, msg: bytes) -> None:
        self.cmd(b"MAIL FROM:<sender@example.org>", 250)
        self.cmd(f"RCPT TO:<{rcpt}>".encode(), 250)
        self.cmd(b"DATA", 354)
        if b"\r\n." in msg or msg.startswith(b"."):
            msg = re.sub(rb"(?m)^\.", b"..", msg)
        self.sock.sendall(msg + b".\r\n")
        self.expect(250, "DATA")

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        self.sock.close()


@dataclass
class ImapReply:
    status: bytes  # OK / NO / BAD
    line: bytes
    untagged: int = 0
    literal_bytes: int = 0
    search: list[int] = field(default_factory=list)


class Imap:
    """A raw IMAP client that reads responses without building them: it counts untagged
    responses, skips literals by length, and keeps only SEARCH results."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb", buffering=128 << 10)
        self.tags = 0
        greeting = self.readline()
        if not greeting.startswith(b"* OK"):
            raise ProtocolError(f"IMAP greeting: {greeting!r}")

    def readline(self) -> bytes:
        line = self.f.readline(LINE_BYTES_MAX)
        if not line:
            raise ProtocolError("IMAP server closed the connection")
        if not line.endswith(b"\n"):
            raise ProtocolError(f"IMAP line longer than {LINE_BYTES_MAX} bytes")
        return line

    def skip(self, n: int) -> None:
        while n > 0:
            got = self.f.read(min(n, LITERAL_CHUNK))
            if not got:
                raise ProtocolError("IMAP server closed the connection inside a literal")
            n -= len(got)

    def send(self, data: bytes) -> bytes:
        self.tags += 1
        tag = b"t%d" % self.tags
        self.sock.sendall(tag + b" " + data + b"\r\n")
        return tag

    def wait(self, tag: bytes) -> ImapReply:
        r = ImapReply(b"", b"")
        prefix = tag + b" "
        for _ in range(RESPONSES_MAX):
            line = self.readline()
            if line.startswith(prefix):
                r.line = line
                r.status = line[len(prefix):].split(b" ", 1)[0].upper()
                return r
            if line.startswith(b"* "):
                r.untagged += 1
                if line.startswith(b"* SEARCH"):
                    r.search.extend(int(x) for x in line[8:].split())
            # A literal may be followed by more of the same response: read on.
            for _ in range(RESPONSES_MAX):
                if not line.endswith(b"}\r\n"):
                    break
                n = int(line[line.rindex(b"{") + 1:-3].rstrip(b"+"))
                r.literal_bytes += n
                self.skip(n)
                line = self.readline()
        raise ProtocolError(f"more than {RESPONSES_MAX} responses")

    def run(self, data: bytes, ok: bool = True) -> ImapReply:
        r = self.wait(self.send(data))
        if ok and r.status != b"OK":
            raise ProtocolError(f"{data[:60]!r} answered {r.line!r}")
        return r

    def login(self, user: str) -> None:
        self.run(f'LOGIN "{user}" "{PASSWORD}"'.encode())

    def append(self, mailbox: str, msg: bytes) -> None:
        # LITERAL+ (both servers advertise it): no round trip for the continuation.
        tag = self.send(f'APPEND "{mailbox}" (\\Seen) {{{len(msg)}+}}'.encode())
        self.sock.sendall(msg + b"\r\n")
        r = self.wait(tag)
        if r.status != b"OK":
            raise ProtocolError(f"APPEND answered {r.line!r}")

    def close(self) -> None:
        try:
            self.sock.sendall(b"z LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def session(peer: "Peer", user: str, select: str | None = "INBOX") -> Imap:
    c = Imap(peer.imap_port)
    c.login(user)
    if select:
        c.run(f'SELECT "{select}"'.encode())
    return c


# --------------------------------------------------------------------------------------
# processes and memory


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo and len(out) < 1_000_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_kib(pids: list[int]) -> int:
    """Proportional set size summed over `pids`: shared pages (libraries, Dovecot's mmapped
    indexes) are split between the processes that map them, so the sum counts them once."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass  # exited meanwhile
    return total


def wait_ports(proc: subprocess.Popen, ports: list[int], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for port in ports:
        while not harness.port_accepts(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} at start:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port} in {START_TIMEOUT_S}s:\n{tail(log)}")
            time.sleep(0.05)


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------------------
# the two servers


class Peer:
    """One server under test: a process tree we started, its temp dir, its two ports."""

    name: str
    imap_port: int
    lmtp_port: int
    tmp: Path
    proc: subprocess.Popen

    def add_user(self, address: str) -> None:
        raise NotImplementedError

    def spawn(self, cmd: list[str], out: Path, log: Path) -> None:
        """Starts the server in its own session (a Ctrl-C for the driver must not hit it
        first) with a parent-death signal, and waits until both ports accept."""
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=open(out, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=harness._die_with_parent)
        try:
            wait_ports(self.proc, [self.imap_port, self.lmtp_port], self.name, log)
        except BaseException:
            self.close()
            raise

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def close(self) -> None:
        try:
            if getattr(self, "proc", None) is not None:
                stop_process(self.proc)
        finally:
            if os.environ.get("BENCH_KEEP") != "1":
                shutil.rmtree(self.tmp, ignore_errors=True)


class Tandem(Peer):
    """`tandem serve` as an operator would run it: default settings, every listener on a
    free loopback port, plaintext LOGIN allowed (loopback only, like Dovecot here), and the
    abuse limits that would refuse the bench's own load lifted, as Dovecot's are (1,000
    connections of one account from one address; 1,000 STOREs in a burst)."""

    name = "tandem"
    # Every `[listen]` key: unset keys default to 127.0.0.1:<standard port + 10000>, which
    # another server on the machine may hold, so each gets a free port of its own.
    LISTEN_KEYS = ("imap", "imaps", "pop3", "pop3s", "lmtp", "smtp", "submission",
                   "submissions", "http", "https")

    def __init__(self, binary: str):
        self.binary = binary
        self.tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
        self.data = self.tmp / "data"
        self.data.mkdir()
        ports = {k: harness.free_port() for k in self.LISTEN_KEYS}
        self.imap_port, self.lmtp_port = ports["imap"], ports["lmtp"]
        # Capacity for the connection workloads (thousands of sessions of one user from
        # one address), as for Dovecot below; these limits bound sessions only.
        (self.data / "tandem.toml").write_text(
            "allow_plaintext_auth = true\n[limits]\nimap_connections_per_ip_max = 0\n"
            "imap_connections_per_user_max = 0\nimap_commands_per_second = 0\n[listen]\n"
            + "".join(f'{k} = "{HOST}:{p}"\n' for k, p in ports.items()))
        log = self.tmp / "server.log"
        self.spawn([binary, "--data", str(self.data), "serve"], log, log)

    def add_user(self, address: str) -> None:
        r = subprocess.run([self.binary, "--data", str(self.data), "user", "add", address,
                            "--password-stdin"], input=f"{PASSWORD}\n".encode(),
                           capture_output=True, timeout=CMD_TIMEOUT_S)
        if r.returncode != 0:
            raise RuntimeError(f"tandem user add {address}: {r.stderr.decode(errors='replace')}")

    def blob_files(self) -> list[Path]:
        """Every message blob (`<2 hex>/<64 hex>` under the data dir)."""
        out = []
        for dirpath, _, files in os.walk(self.data):
            if re.fullmatch(r"[0-9a-f]{2}", os.path.basename(dirpath)):
                out.extend(Path(dirpath, f) for f in files if re.fullmatch(r"[0-9a-f]{64}", f))
        return sorted(out)


DOVECOT_CONF = """\
# Throwaway Dovecot for scripts/bench. Everything not set here is Dovecot's default,
# durability included (mail_fsync = optimized).
instance_name = {instance}
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
protocols = imap lmtp
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = {location}
# Capacity for the idle-connection workload (1,000 connections of one user from one
# address); these limits bound sessions, they do not change how mail is stored.
default_client_limit = 4096
protocol imap {{
  mail_max_userip_connections = 4096
}}
service imap {{
  process_limit = 4096
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {tmp}/passwd
}}
# Dovecot refuses to run mail processes as uid 0: mail belongs to nobody.
userdb {{
  driver = passwd-file
  args = {tmp}/passwd
  default_fields = uid=nobody gid=nogroup home={tmp}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
}}
"""

MAIL_LOCATIONS = {"sdbox": "sdbox:~/sdbox", "mdbox": "mdbox:~/mdbox", "maildir": "maildir:~/Maildir"}


class Dovecot(Peer):
    """A private Dovecot instance: own config, base_dir, logs and users in a temp dir,
    master in the foreground as our child."""

    name = "dovecot"

    def __init__(self, mail_format: str):
        self.tmp = Path(tempfile.mkdtemp(prefix="dovecot-bench-"))
        os.chmod(self.tmp, 0o755)  # login and mail processes run as other users
        (self.tmp / "home").mkdir()
        shutil.chown(self.tmp / "home", "nobody", "nogroup")
        self.passwd = self.tmp / "passwd"
        self.passwd.write_text("")
        self.imap_port = harness.free_port()
        self.lmtp_port = harness.free_port()
        self.conf = self.tmp / "dovecot.conf"
        self.conf.write_text(DOVECOT_CONF.format(
            instance=f"bench{os.getpid()}", tmp=self.tmp, host=HOST,
            location=MAIL_LOCATIONS[mail_format],
            imap_port=self.imap_port, lmtp_port=self.lmtp_port))
        self.spawn(["dovecot", "-F", "-c", str(self.conf)], self.tmp / "stdout.log",
                   self.tmp / "dovecot.log")

    def setting(self, name: str) -> str:
        r = subprocess.run(["doveconf", "-c", str(self.conf), "-h", name],
                           capture_output=True, text=True, timeout=60)
        return r.stdout.strip()

    def add_user(self, address: str) -> None:
        # passwd-file is re-read when it changes, but Dovecot looks at it at most once a
        # second: wait that second out so the next lookup sees the new user.
        with open(self.passwd, "a") as f:
            f.write(f"{address}:{{PLAIN}}{PASSWORD}::::::\n")
        time.sleep(1.1)


# --------------------------------------------------------------------------------------
# workloads: one function each, `(bench, peer, run) -> {row key: value}`


class Bench:
    def __init__(self, counts: Counts, corpus: Corpus, dovecot: Dovecot, tandem: Tandem):
        self.n = counts
        self.corpus = corpus
        self.dovecot = dovecot
        self.tandem = tandem
        self.big_user = "big@example.com"
        self.idle_user = "idle@example.com"
        self.append_user = "append@example.com"

    def setup(self) -> None:
        """Users on both servers and the big mailbox, delivered by LMTP (8 connections)."""
        for peer in (self.dovecot, self.tandem):
            for u in (self.big_user, self.idle_user, self.append_user):
                peer.add_user(u)
            t0 = time.perf_counter()
            deliver_parallel(peer, self.big_user, 8, lambda k: self.corpus.message(k), self.n.mailbox)
            dt = time.perf_counter() - t0
            log(f"  {peer.name}: {self.n.mailbox} messages into {self.big_user} in {dt:.1f}s")
            deliver_parallel(peer, self.idle_user, 1, lambda k: self.corpus.message(3_000_000 + k), 20)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def deliver_parallel(peer: Peer, rcpt: str, conns: int, message: Callable[[int], bytes],
                     total: int) -> None:
    """Delivers messages 0..total over `conns` connections (message k on connection
    k % conns); raises the first error after every connection has stopped."""
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            c = Lmtp(peer.lmtp_port)
            try:
                for k in range(w, total, conns):
                    if errors:
                        return
                    c.deliver(rcpt, message(k))
            finally:
                c.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(conns)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 3600
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"LMTP delivery to {peer.name} did not finish within an hour")
    if errors:
        raise errors[0]


def lmtp_run(bench: Bench, peer: Peer, run: int, conns: int) -> dict[str, float]:
    # A fresh user and never-seen messages each run: every run delivers into the same
    # state, and no content-addressed store can skip a write it already has.
    user = f"lmtp{conns}-r{run}@example.com"
    peer.add_user(user)
    start = 1_000_000 + (run * 2 + (conns > 1)) * bench.n.lmtp
    msgs = bench.corpus.messages(start, bench.n.lmtp, user)
    size = sum(len(m) for m in msgs)
    t0 = time.perf_counter()
    deliver_parallel(peer, user, conns, lambda k: msgs[k], len(msgs))
    dt = time.perf_counter() - t0
    return {f"lmtp{conns}_msgs": len(msgs) / dt, f"lmtp{conns}_mb": size / dt / 1e6}


def wl_lmtp_1(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    return lmtp_run(bench, peer, run, 1)


def wl_lmtp_8(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    return lmtp_run(bench, peer, run, 8)


def wl_select(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    times = []
    for _ in range(bench.n.select_repeats):
        c = session(peer, bench.big_user, select=None)
        try:
            t0 = time.perf_counter()
            c.run(b"SELECT INBOX")
            times.append(time.perf_counter() - t0)
        finally:
            c.close()
    return {"select_ms": statistics.median(times) * 1000}


def time_one(bench: Bench, peer: Peer, command: bytes) -> tuple[float, ImapReply]:
    """One command on a fresh session with the big mailbox selected, timed from the send
    to the tagged OK (login and SELECT are not timed)."""
    c = session(peer, bench.big_user)
    try:
        t0 = time.perf_counter()
        r = c.run(command)
        return time.perf_counter() - t0, r
    finally:
        c.close()


def fetch_all(bench: Bench, peer: Peer, items: bytes) -> tuple[float, ImapReply]:
    dt, r = time_one(bench, peer, b"FETCH 1:* " + items)
    if r.untagged < bench.n.mailbox:
        raise ProtocolError(f"FETCH {items!r}: {r.untagged} responses for {bench.n.mailbox} messages")
    return dt, r


def wl_fetch_flags(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    dt, _ = fetch_all(bench, peer, b"(FLAGS)")
    return {"fetch_flags": bench.n.mailbox / dt}


def wl_fetch_envelope(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    dt, _ = fetch_all(bench, peer, b"(ENVELOPE)")
    return {"fetch_envelope": bench.n.mailbox / dt}


def wl_fetch_bodystructure(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    dt, _ = fetch_all(bench, peer, b"(BODYSTRUCTURE)")
    return {"fetch_bodystructure": bench.n.mailbox / dt}


def wl_fetch_body(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    dt, r = fetch_all(bench, peer, b"(BODY.PEEK[])")
    return {"fetch_body": bench.n.mailbox / dt, "fetch_body_mb": r.literal_bytes / dt / 1e6}


def search(bench: Bench, peer: Peer, criteria: bytes, expected: int) -> float:
    dt, r = time_one(bench, peer, b"UID SEARCH " + criteria)
    if len(r.search) != expected:
        raise ProtocolError(f"SEARCH {criteria!r} found {len(r.search)}, expected {expected}")
    return dt * 1000


def wl_search_header(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    hits = sum(Corpus.subject_hit(i) for i in range(bench.n.mailbox))
    return {"search_header_ms": search(bench, peer, f"SUBJECT {SUBJECT_TOKEN}".encode(), hits)}


def wl_search_body(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    hits = sum(Corpus.body_hit(i) for i in range(bench.n.mailbox))
    return {"search_body_ms": search(bench, peer, f"BODY {BODY_TOKEN}".encode(), hits)}


def wl_store_range(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    # Odd runs undo what even runs did, so every run changes every message.
    sign = b"+" if run % 2 == 0 else b"-"
    dt, _ = time_one(bench, peer, b"STORE 1:%d %sFLAGS.SILENT (\\Flagged)" % (bench.n.store, sign))
    return {"store_range": bench.n.store / dt}


def wl_store_single(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    sign = b"+" if run % 2 == 0 else b"-"
    step = max(1, bench.n.mailbox // bench.n.store_single)
    c = session(peer, bench.big_user)
    try:
        t0 = time.perf_counter()
        for k in range(bench.n.store_single):
            c.run(b"STORE %d %sFLAGS.SILENT (\\Answered)" % (1 + k * step, sign))
        dt = time.perf_counter() - t0
    finally:
        c.close()
    return {"store_single": bench.n.store_single / dt}


def wl_append(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    mailbox = f"Append{run}"
    msgs = bench.corpus.messages(2_000_000 + run * bench.n.append, bench.n.append,
                                 bench.append_user)
    size = sum(len(m) for m in msgs)
    c = session(peer, bench.append_user, select=None)
    try:
        c.run(f'CREATE "{mailbox}"'.encode())
        t0 = time.perf_counter()
        for m in msgs:
            c.append(mailbox, m)
        dt = time.perf_counter() - t0
    finally:
        c.close()
    return {"append": len(msgs) / dt, "append_mb": size / dt / 1e6}


def wl_idle_memory(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    """PSS of the whole server (every process) before and with N idle sessions, each
    logged in with INBOX (20 messages) selected."""
    # Self-contained on purpose: this row carries a goal, so its definition stays fixed
    # while the exploratory memory workloads below change.
    time.sleep(1)  # let connections of the previous workload finish closing
    before = pss_kib(peer.pids())
    conns = []
    try:
        for _ in range(bench.n.idle):
            conns.append(session(peer, bench.idle_user))
        time.sleep(2)  # let the server settle (Dovecot's login processes exit)
        after = pss_kib(peer.pids())
    finally:
        for c in conns:
            c.sock.close()
    return {"idle_kib_per_conn": (after - before) / bench.n.idle, "idle_total_mib": after / 1024}


# ---- the selected-mailbox engine: sessions with a large mailbox selected, IDLE at
# scale, QRESYNC reconnects. Their mailboxes hold small messages (what matters is how
# many there are), delivered on first use.


def small_message(i: int, to: str) -> bytes:
    return (f"From: <sender{i % 97}@example.org>\r\nTo: <{to}>\r\nSubject: note {i}\r\n"
            f"Message-ID: <{i}.small@bench.example.org>\r\n\r\nshort body {i}\r\n").encode()


def filled_user(bench: Bench, peer: Peer, user: str, count: int) -> str:
    filled = bench.__dict__.setdefault("filled", set())
    if (peer.name, user) not in filled:
        peer.add_user(user)
        t0 = time.perf_counter()
        deliver_parallel(peer, user, 8, lambda k: small_message(k, user), count)
        log(f"  {peer.name}: {count:,} small messages into {user} in {time.perf_counter() - t0:.1f}s")
        filled.add((peer.name, user))
    return user


def session_memory(peer: Peer, user: str, n: int, idle: bool) -> dict[str, float]:
    """PSS per session in stages, on the same `n` connections: logged in (nothing
    selected), then with INBOX selected, then (if `idle`) in IDLE. KiB per session above
    the server's PSS before the connections, plus the whole server's PSS (MiB) at the end.
    A few sessions first warm what is shared (the store's block cache)."""
    warm = [session(peer, user) for _ in range(10)]
    for c in warm:
        c.close()
    time.sleep(1)
    before = pss_kib(peer.pids())
    out = {}
    conns = []
    try:
        for _ in range(n):
            conns.append(session(peer, user, select=None))
        time.sleep(1)
        out["authed"] = (pss_kib(peer.pids()) - before) / n
        for c in conns:
            c.run(b"SELECT INBOX")
        time.sleep(1)
        out["selected"] = (pss_kib(peer.pids()) - before) / n
        if idle:
            for c in conns:
                c.send(b"IDLE")
                line = c.readline()
                if not line.startswith(b"+"):
                    raise ProtocolError(f"IDLE answered {line!r}")
            time.sleep(2)
            after = pss_kib(peer.pids())
            out["idle"] = (after - before) / n
            out["total_mib"] = after / 1024
    finally:
        for c in conns:
            c.sock.close()
    return out


def wl_session_memory(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    user = filled_user(bench, peer, "sessions@example.com", bench.n.session_mailbox)
    m = session_memory(peer, user, bench.n.sessions, idle=False)
    return {"session_authed_kib": m["authed"], "session_selected_kib": m["selected"]}


def wl_idle_many(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    user = filled_user(bench, peer, "sessions@example.com", bench.n.session_mailbox)
    m = session_memory(peer, user, bench.n.idle_many, idle=True)
    return {"idle_many_kib": m["idle"], "idle_many_mib": m["total_mib"]}


def wl_qresync(bench: Bench, peer: Peer, run: int) -> dict[str, float]:
    """A client that knows the mailbox as of MODSEQ m reconnects after `qresync_changed`
    messages changed flags: connect, LOGIN, ENABLE QRESYNC, SELECT INBOX (QRESYNC
    (uidvalidity m)), until the tagged OK. Every change must come back as a FETCH."""
    user = filled_user(bench, peer, "qresync@example.com", bench.n.qresync_mailbox)
    c = session(peer, user, select=None)
    try:
        c.run(b"ENABLE QRESYNC")
        tag = c.send(b"SELECT INBOX")
        lines = []
        while True:
            line = c.readline()
            if line.startswith(tag + b" "):
                break
            lines.append(line)
        def code(name: bytes) -> int:
            for l in lines:
                m = re.search(rb"\[" + name + rb" (\d+)\]", l)
                if m:
                    return int(m.group(1))
            raise ProtocolError(f"SELECT gave no {name!r}")
        validity, modseq, uidnext = code(b"UIDVALIDITY"), code(b"HIGHESTMODSEQ"), code(b"UIDNEXT")
        rng = random.Random(f"{SEED}:qresync:{run}")
        uids = sorted(rng.sample(range(1, uidnext), bench.n.qresync_changed))
        c.run(b"UID STORE %s +FLAGS.SILENT ($Bench%d)" % (",".join(map(str, uids)).encode(), run))
    finally:
        c.close()
    t0 = time.perf_counter()
    c = Imap(peer.imap_port)
    try:
        c.login(user)
        c.run(b"ENABLE QRESYNC")
        t1 = time.perf_counter()
        r = c.run(b"SELECT INBOX (QRESYNC (%d %d))" % (validity, modseq))
        t2 = time.perf_counter()
    finally:
        c.close()
    if r.untagged < bench.n.qresync_changed:
        raise ProtocolError(f"QRESYNC SELECT: {r.untagged} responses for {bench.n.qresync_changed} changes")
    return {"qresync_ms": (t2 - t0) * 1000, "qresync_select_ms": (t2 - t1) * 1000}


# ---- audit: `tandem audit` against b3sum over the same blob files


def tandem_audit_available(binary: str) -> bool:
    try:
        r = subprocess.run([binary, "audit", "--help"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def timed(cmd: list[str], what: str, stdin: bytes | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=CMD_TIMEOUT_S)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{what} exited {r.returncode}: {r.stderr.decode(errors='replace')[-400:]}")
    return dt


def audit_sides(bench: Bench) -> list[tuple[str, Callable[[int], dict[str, float]]]]:
    t = bench.tandem
    checkfile = t.tmp / "blobs.b3"  # removed with the server's temp dir

    def b3sum(run: int) -> dict[str, float]:
        # The same check audit makes of each blob: its BLAKE3 equals its name.
        if run == 0 or not checkfile.exists():
            checkfile.write_text("".join(f"{p.name}  {p}\n" for p in t.blob_files()))
        return {"audit_s": timed(["b3sum", "--check", "--quiet", str(checkfile)], "b3sum --check")}

    def audit(run: int) -> dict[str, float]:
        return {"audit_s": timed([t.binary, "--data", str(t.data), "audit"], "tandem audit")}

    return [("b3sum", b3sum), ("tandem", audit)]


def mx_sides(bench: Bench) -> list[tuple[str, Callable[[int], dict[str, float]]]]:
    """SMTP MX acceptance beside LMTP delivery on one Tandem: 8 connections, 10 KB messages.

    A server of its own, so the MX can be given a static (empty) DNS table: SPF, DKIM and
    DMARC still run on every message, answered from memory instead of the network, and the
    per-address message rate limit is off (all the load comes from 127.0.0.1)."""
    import atexit
    import harness

    os.environ.setdefault("TANDEM_BIN", bench.tandem.binary)
    srv = harness.Server(dns={}, extra_toml="[smtp]\nmessages_per_ip_per_minute = 0\n")
    atexit.register(srv.close)

    class Smtp(Lmtp):
        def __init__(self, port: int):
            self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.f = self.sock.makefile("rb")
            self.expect(220, "greeting")
            self.cmd(b"EHLO bench.example.org", 250)

    def run_side(kind: str, run: int) -> dict[str, float]:
        user = f"{kind}-r{run}@example.com"
        srv.add_user(user, PASSWORD)
        rng = random.Random(f"mx:{kind}:{run}")
        msgs = [(f"From: sender@example.org\r\nTo: {user}\r\nSubject: {kind} {run} {k}\r\n"
                 f"Message-ID: <{kind}.{run}.{k}@bench>\r\n\r\n").encode()
                + bench.corpus.text(rng, 10_000, False)[:10_000] + b"\r\n"
                for k in range(bench.n.lmtp)]
        port = srv.ports["smtp" if kind == "mx" else "lmtp"]
        conns, errors = 8, []

        def worker(w: int) -> None:
            try:
                c = Smtp(port) if kind == "mx" else Lmtp(port)
                try:
                    for k in range(w, len(msgs), conns):
                        if errors:
                            return
                        c.deliver(user, msgs[k])
                finally:
                    c.close()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(conns)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(3600)
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
        if any(t.is_alive() for t in threads):
            raise RuntimeError(f"{kind} delivery did not finish within an hour")
        return {"mx8_msgs": len(msgs) / dt}

    return [("LMTP", lambda run: run_side("lmtp", run)), ("tandem", lambda run: run_side("mx", run))]


# --------------------------------------------------------------------------------------
# rows, the runner and the report


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    goal: float | None  # how many times better Tandem should be; None: no goal
    goal_text: str = ""


@dataclass
class Workload:
    name: str
    rows: list[Row]
    fn: Callable[[Bench, Peer, int], dict[str, float]] | None = None
    # For workloads whose sides are not the two servers: (peer label, per-run function).
    sides: Callable[[Bench], list[tuple[str, Callable[[int], dict[str, float]]]]] | None = None
    peer_label: str = "dovecot"
    unavailable: Callable[[Bench], str | None] = lambda bench: None


LMTP_GOAL = (2.0, ">= 2x")
IMAP_GOAL = (1.0, ">= 1x")


def imap_row(key: str, label: str, unit: str, higher: bool = True) -> Row:
    return Row(key, label, unit, higher, *IMAP_GOAL)


def workloads(counts: Counts, binary: str) -> list[Workload]:
    n = counts
    return [
        Workload("lmtp_1", [
            Row("lmtp1_msgs", f"LMTP delivery, {n.lmtp:,} msgs, 1 connection", "msg/s", True, *LMTP_GOAL),
            Row("lmtp1_mb", f"LMTP delivery, {n.lmtp:,} msgs, 1 connection", "MB/s", True, *LMTP_GOAL),
        ], wl_lmtp_1),
        Workload("lmtp_8", [
            Row("lmtp8_msgs", f"LMTP delivery, {n.lmtp:,} msgs, 8 connections", "msg/s", True, *LMTP_GOAL),
            Row("lmtp8_mb", f"LMTP delivery, {n.lmtp:,} msgs, 8 connections", "MB/s", True, *LMTP_GOAL),
        ], wl_lmtp_8),
        Workload("mx_8", [
            Row("mx8_msgs", f"SMTP MX (SPF/DKIM/DMARC) vs LMTP, {n.lmtp:,} msgs of 10 KB, 8 conns",
                "msg/s", True, None, "vs Tandem LMTP"),
        ], sides=mx_sides, peer_label="LMTP"),
        Workload("select", [imap_row("select_ms", f"SELECT, {n.mailbox:,}-message mailbox", "ms", False)], wl_select),
        Workload("fetch_flags", [imap_row("fetch_flags", "FETCH 1:* (FLAGS)", "msg/s")], wl_fetch_flags),
        Workload("fetch_envelope", [imap_row("fetch_envelope", "FETCH 1:* (ENVELOPE)", "msg/s")], wl_fetch_envelope),
        Workload("fetch_bodystructure", [imap_row("fetch_bodystructure", "FETCH 1:* (BODYSTRUCTURE)", "msg/s")],
                 wl_fetch_bodystructure),
        Workload("fetch_body", [
            imap_row("fetch_body", "FETCH 1:* (BODY.PEEK[])", "msg/s"),
            imap_row("fetch_body_mb", "FETCH 1:* (BODY.PEEK[])", "MB/s"),
        ], wl_fetch_body),
        Workload("search_header", [imap_row("search_header_ms", "UID SEARCH SUBJECT (header)", "ms", False)],
                 wl_search_header),
        Workload("search_body", [imap_row("search_body_ms", "UID SEARCH BODY (body text)", "ms", False)],
                 wl_search_body),
        Workload("store_range", [imap_row("store_range", f"STORE +FLAGS on {n.store:,} msgs, 1 command", "msg/s")],
                 wl_store_range),
        Workload("store_single", [imap_row("store_single", f"STORE, {n.store_single:,} commands of 1 msg", "cmd/s")],
                 wl_store_single),
        Workload("append", [
            imap_row("append", f"APPEND {n.append:,} msgs, 1 connection", "msg/s"),
            imap_row("append_mb", f"APPEND {n.append:,} msgs, 1 connection", "MB/s"),
        ], wl_append),
        Workload("idle_memory", [
            Row("idle_kib_per_conn", f"Memory per idle IMAP connection ({n.idle:,} open)", "KiB PSS",
                False, 10.0, "<= 1/10"),
            Row("idle_total_mib", f"Whole server with {n.idle:,} idle connections", "MiB PSS", False, None),
        ], wl_idle_memory),
        Workload("session_memory", [
            Row("session_authed_kib", f"Memory per logged-in session, nothing selected ({n.sessions:,} open)",
                "KiB PSS", False, None),
            Row("session_selected_kib",
                f"Memory per session, {n.session_mailbox:,}-message INBOX selected ({n.sessions:,} open)",
                "KiB PSS", False, None),
        ], wl_session_memory),
        Workload("idle_many", [
            Row("idle_many_kib", f"Memory per session in IDLE ({n.idle_many:,} open, "
                f"{n.session_mailbox:,}-message INBOX)", "KiB PSS", False, None),
            Row("idle_many_mib", f"Whole server with {n.idle_many:,} sessions in IDLE", "MiB PSS", False, None),
        ], wl_idle_many),
        Workload("qresync", [
            imap_row("qresync_ms", f"QRESYNC reconnect (connect, LOGIN, SELECT), {n.qresync_mailbox:,} "
                     f"msgs, {n.qresync_changed} changed", "ms", False),
            imap_row("qresync_select_ms", f"  of which SELECT ... (QRESYNC ...)", "ms", False),
        ], wl_qresync),
        Workload("audit", [
            Row("audit_s", "Blob audit: tandem audit vs b3sum --check", "s", False, 0.8, "<= 1.25x b3sum"),
        ], sides=audit_sides, peer_label="b3sum",
            unavailable=lambda bench: None if tandem_audit_available(binary)
            else "n/a (tandem audit not available)"),
    ]


@dataclass
class Result:
    row: Row
    peer_label: str
    peer_runs: list[float] = field(default_factory=list)
    tandem_runs: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    note: str = ""

    def median(self, xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None

    @property
    def peer(self) -> float | None:
        return self.median(self.peer_runs)

    @property
    def tandem(self) -> float | None:
        return self.median(self.tandem_runs)

    @property
    def advantage(self) -> float | None:
        """How many times better Tandem is (> 1: Tandem better), whatever the unit."""
        p, t = self.peer, self.tandem
        if p is None or t is None or p <= 0 or t <= 0:
            return None
        return t / p if self.row.higher_is_better else p / t

    @property
    def met(self) -> bool | None:
        a = self.advantage
        if self.row.goal is None or a is None:
            return None
        return a >= self.row.goal

    def to_json(self) -> dict:
        r = self.row
        return {
            "key": r.key, "label": r.label, "unit": r.unit,
            "better": "higher" if r.higher_is_better else "lower",
            "peer": self.peer_label, "peer_median": self.peer, "peer_runs": self.peer_runs,
            "tandem_median": self.tandem, "tandem_runs": self.tandem_runs,
            "tandem_advantage": self.advantage, "goal": r.goal_text or None, "goal_met": self.met,
            "errors": self.errors, "note": self.note or None,
        }


def run_workload(bench: Bench, wl: Workload, runs: int) -> list[Result]:
    results = {r.key: Result(r, wl.peer_label) for r in wl.rows}
    why = wl.unavailable(bench)
    if why:
        for res in results.values():
            res.note = why
        return list(results.values())
    if wl.sides:
        sides = wl.sides(bench)
    else:
        fn = wl.fn
        sides = [(p.name, (lambda p: lambda run: fn(bench, p, run))(p))
                 for p in (bench.dovecot, bench.tandem)]
    for run in range(runs):
        # Alternate who goes first, so neither always gets the warmer (or busier) machine.
        order = sides if run % 2 == 0 else list(reversed(sides))
        for label, side in order:
            log(f"  {wl.name} run {run + 1}/{runs}: {label}")
            is_tandem = label == "tandem"
            try:
                got = side(run)
            except Exception as e:  # one failed run is reported, the bench goes on
                msg = f"{label} run {run + 1}: {type(e).__name__}: {e}"
                log(f"    error: {msg}")
                for res in results.values():
                    res.errors.append(msg)
                continue
            for key, value in got.items():
                res = results[key]
                (res.tandem_runs if is_tandem else res.peer_runs).append(value)
    return list(results.values())


def fmt(x: float | None) -> str:
    if x is None:
        return "error"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(results: list[Result]) -> str:
    out = ["| workload | unit | Dovecot | Tandem | Tandem × | goal | met |",
           "|---|---|---:|---:|---:|---|---|"]
    for r in results:
        row = r.row
        if r.note:
            out.append(f"| {row.label} | {row.unit} | {r.note} | | | {row.goal_text} | |")
            continue
        peer = fmt(r.peer)
        if r.peer_label != "dovecot":
            peer += f" ({r.peer_label})"
        adv = "" if r.advantage is None else f"{r.advantage:.2f}"
        met = {True: "met", False: "not met", None: ""}[r.met]
        goal = row.goal_text or ("" if row.goal is None else f">= {row.goal:g}x")
        out.append(f"| {row.label} | {row.unit} | {peer} | {fmt(r.tandem)} | {adv} | {goal} | {met} |")
    return "\n".join(out)


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def command_line() -> str:
    """How this run was started, as the user typed it to scripts/bench (without --bin)."""
    args, skip = [], False
    for x in sys.argv[1:]:
        if skip:
            skip = False
        elif x == "--bin":
            skip = True
        elif not x.startswith("--bin="):
            args.append(x)
    return " ".join(["scripts/bench", *args])


# --------------------------------------------------------------------------------------
# replication (its own run: `scripts/bench --replication`; not in the Dovecot table)


class _Host:
    """What `deliver_parallel` needs of one cluster host."""

    def __init__(self, name: str, server: "harness.Server"):
        self.name = name
        self.lmtp_port = server.ports["lmtp"]


def _repl_slots(durability: str) -> str:
    return ('[slots.s1]\nmaster = "a"\nreplicas = ["b"]\n'
            f'durability = "{durability}"\nreplica_timeout_ms = 10000\n')


def _repl_status(c: "harness.Cluster") -> dict:
    return [s for s in c.status("a") if s["slot"] == "s1"][0]["replicas"][0]


def _paced(host: _Host, rcpt: str, msgs: list[bytes], rate: float, conns: int) -> None:
    """Delivers `msgs` at `rate` messages per second in total over `conns` connections:
    message k leaves no earlier than k / rate seconds after the start."""
    t0 = time.monotonic() + 0.2

    def at_its_time(k: int) -> bytes:
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return msgs[k]

    deliver_parallel(host, rcpt, conns, at_its_time, len(msgs))


def replication_bench(binary: str, quick: bool) -> dict[str, float]:
    """Two hosts on loopback (a masters s1, b replicates it). Measures, in one run:
    LMTP throughput with `durability = "replica"` against `"local"` (alternating, median
    of the runs, fresh user each run), and the replication lag (local commit to replica
    fsync, per group commit, as the master measures it) at a steady 200 deliveries/s."""
    os.environ["TANDEM_BIN"] = binary
    corpus = Corpus(SEED)
    total, conns, runs = (300, 8, 1) if quick else (2000, 8, 3)
    rate, seconds = 200.0, (5 if quick else 20)
    rates: dict[str, list[float]] = {"local": [], "replica": []}
    with harness.Cluster(["a", "b"], _repl_slots("local")) as c:
        c.start()
        host = _Host("tandem-a", c["a"])
        n = 0
        for run in range(runs):
            order = ("local", "replica") if run % 2 == 0 else ("replica", "local")
            for mode in order:
                c["a"].stop()
                c.write_cluster(_repl_slots(mode))
                c["a"].start()
                c.wait_synced("a", timeout=120)
                user = f"repl-{mode}-{run}@example.com"
                c.add_user(user, PASSWORD)
                msgs = corpus.messages(2_000_000 + n, total, user)
                n += total
                t0 = time.perf_counter()
                deliver_parallel(host, user, conns, lambda k: msgs[k], total)
                rates[mode].append(total / (time.perf_counter() - t0))
                log(f"replication: {mode} run {run}: {rates[mode][-1]:.0f} msg/s")
        # Steady load with local (asynchronous) durability: how far behind the replica is.
        c["a"].stop()
        c.write_cluster(_repl_slots("local"))
        c["a"].start()
        c.wait_synced("a", timeout=120)
        user = "repl-lag@example.com"
        c.add_user(user, PASSWORD)
        msgs = corpus.messages(3_000_000, int(rate * seconds), user)
        lag_samples = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    lag_samples.append(_repl_status(c)["lag_ms"])
                except Exception:
                    pass
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        _paced(host, user, msgs, rate, 4)
        achieved = len(msgs) / (time.perf_counter() - t0)
        stop.set()
        sampler.join(10)
        c.wait_synced("a", timeout=120)
        st = _repl_status(c)
    local, replica = statistics.median(rates["local"]), statistics.median(rates["replica"])
    return {
        "lmtp_local_msgs_per_s": local,
        "lmtp_replica_msgs_per_s": replica,
        "replica_vs_local": replica / local,
        "steady_rate_msgs_per_s": achieved,
        "lag_p50_ms": st["latency_p50_ms"],
        "lag_p99_ms": st["latency_p99_ms"],
        "lag_samples": st["latency_samples"],
        "lag_ms_sampled_max": max(lag_samples, default=0),
    }


def replication_main(binary: str, quick: bool, json_path: str | None) -> int:
    r = replication_bench(binary, quick)
    print("Replication, two hosts on loopback (a master, b replica), same run\n")
    print("| measure | value |\n|---|---:|")
    print(f"| LMTP 8 conns, durability local (msg/s) | {r['lmtp_local_msgs_per_s']:.0f} |")
    print(f"| LMTP 8 conns, durability replica (msg/s) | {r['lmtp_replica_msgs_per_s']:.0f} |")
    print(f"| replica / local | {r['replica_vs_local']:.2f} |")
    print(f"| steady load achieved (msg/s) | {r['steady_rate_msgs_per_s']:.0f} |")
    print(f"| replication lag p50 (ms, commit to replica fsync) | {r['lag_p50_ms']} |")
    print(f"| replication lag p99 (ms) | {r['lag_p99_ms']} |")
    print(f"| lag sampled by `tandem status`, max (ms) | {r['lag_ms_sampled_max']} |")
    if json_path:
        Path(json_path).write_text(json.dumps({"replication": r, "machine": machine()}, indent=2) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="Tandem vs Dovecot on this machine (see docs/benchmarks.md).")
    ap.add_argument("--bin", required=True, help="tandem binary (release build)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--quick", action="store_true", help="small counts, one run: a smoke test")
    ap.add_argument("--runs", type=int, help="alternating runs per workload (default 3; --quick 1)")
    ap.add_argument("--only", help="comma-separated workload names (default: all)")
    ap.add_argument("--dovecot-format", choices=sorted(MAIL_LOCATIONS), default="sdbox",
                    help="Dovecot mailbox format (default sdbox; see docs/benchmarks.md)")
    ap.add_argument("--replication", action="store_true",
                    help="run only the replication benchmark (two Tandem hosts, no Dovecot)")
    a = ap.parse_args()
    if a.replication:
        return replication_main(a.bin, a.quick, a.json)
    counts = QUICK if a.quick else FULL
    runs = a.runs or counts.runs
    if not 1 <= runs <= 50:
        ap.error("--runs must be between 1 and 50")
    wls = workloads(counts, a.bin)
    if a.only:
        names = set(a.only.split(","))
        unknown = names - {w.name for w in wls}
        if unknown:
            ap.error(f"unknown workloads {sorted(unknown)}; known: {[w.name for w in wls]}")
        wls = [w for w in wls if w.name in names]

    # 1,000 idle connections need 1,000 descriptors here and in both servers (inherited).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 16384)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))

    started = datetime.datetime.now(datetime.timezone.utc)
    corpus = Corpus(SEED)
    dovecot = tandem = None
    try:
        log("starting dovecot and tandem")
        dovecot = Dovecot(a.dovecot_format)
        tandem = Tandem(a.bin)
        bench = Bench(counts, corpus, dovecot, tandem)
        log(f"setup: {counts.mailbox:,}-message mailbox on both (LMTP, 8 connections)")
        bench.setup()
        results: list[Result] = []
        for wl in wls:
            log(f"workload {wl.name}")
            results.extend(run_workload(bench, wl, runs))
        dovecot_info = {
            "version": subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                                      timeout=60).stdout.strip(),
            "mail_format": a.dovecot_format,
            "mail_fsync": dovecot.setting("mail_fsync"),
        }
    finally:
        for p in (tandem, dovecot):
            if p is not None:
                p.close()
    finished = datetime.datetime.now(datetime.timezone.utc)

    print(f"Tandem vs Dovecot {dovecot_info['version']} ({dovecot_info['mail_format']}, "
          f"mail_fsync={dovecot_info['mail_fsync']}); median of {runs} alternating run(s); "
          f"{started:%Y-%m-%d}; {machine()['cpus']} CPUs")
    print("Tandem × = how many times better Tandem is (higher is better in every row).\n")
    print(table(results))
    errors = [e for r in results for e in r.errors]
    if errors:
        print("\nerrors:")
        for e in sorted(set(errors)):
            print(f"  {e}")
    if a.json:
        doc = {
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "command": command_line(),
            "runs": runs, "counts": counts.__dict__, "seed": SEED,
            "machine": machine(), "dovecot": dovecot_info,
            "rows": [r.to_json() for r in results],
        }
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
