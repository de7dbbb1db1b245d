"""Harness for Tandem's end-to-end tests: runs the real `tandem` binary on real sockets.

Everything here is Python 3.11 standard library. A test gets a `Server` (its own temp data
directory, its own free ports, its own `tandem.toml`), talks to it with the helpers below
(`imaps()`, `imap_plain()`, `Lmtp`, `RawImap`), and the server and its directory are removed
when the `with` block (or class cleanup) ends — also when the test fails.

Environment:
  TANDEM_BIN       path of the binary (default: target/debug/tandem under the repo root)
  TANDEM_E2E_KEEP  set to 1 to keep temp directories (server.log, data dir) for post-mortems
"""

from __future__ import annotations

import atexit
import base64
import datetime
import email.utils
import imaplib
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DOMAIN = "example.com"

# Every wait in the harness is bounded; these are the bounds.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
IO_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0


def tandem_bin() -> str:
    p = Path(os.environ.get("TANDEM_BIN") or "target/debug/tandem")
    if not p.is_absolute():
        p = REPO_ROOT / p
    return str(p)


def check_binary() -> str | None:
    """None when the binary is usable, else a one-line reason."""
    b = tandem_bin()
    if not os.path.isfile(b):
        return f"tandem binary not found at {b}: run `cargo build -p tandem` or set TANDEM_BIN"
    if not os.access(b, os.X_OK):
        return f"{b} is not executable"
    return None


# --------------------------------------------------------------------------------------
# ports

_ports_given: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now. Never hands out the same port twice in one run, so two
    servers of the same test process cannot be configured onto one port."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("could not find a free port")


def port_accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# the server

_live_servers: "weakref.WeakSet[Server]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # Last resort (e.g. Ctrl-C during a test): never leave a server running.
    for s in list(_live_servers):
        try:
            s.close()
        except Exception:
            pass


_RUNNER_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _die_with_parent() -> None:
    # Runs in the child before exec: the signal mask survives exec, so undo spawn()'s block.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _RUNNER_SIGNALS)
    # PR_SET_PDEATHSIG = 1. Servers are only started from the main thread, whose exit is
    # the runner's exit.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class ServerError(Exception):
    pass


class Server:
    """One `tandem serve` process with its own data dir and ports.

    Use as a context manager; `close()` kills the process (if running) and removes the temp
    directory. `start()` is not implied by construction so tests can prepare the data dir.
    """

    def __init__(
        self,
        allow_plaintext_auth: bool = False,
        extra_toml: str = "",
        listen: dict[str, str] | None = None,
        start: bool = True,
        dns: dict[str, list[str]] | None = None,
    ):
        self.tmp = Path(tempfile.mkdtemp(prefix="tandem-e2e-"))
        self.data = self.tmp / "data"
        self.data.mkdir()
        self.log_path = self.tmp / "server.log"
        self.ports = {k: free_port() for k in ("imap", "imaps", "pop3", "pop3s", "lmtp",
                                                 "smtp", "submission", "submissions",
                                                 "http", "https")}
        self.listen = {k: f"{HOST}:{p}" for k, p in self.ports.items()}
        if listen:
            self.listen.update(listen)
        self.allow_plaintext_auth = allow_plaintext_auth
        self.extra_toml = extra_toml
        # Mail DNS always comes from a static table in tests: the server never asks the
        # network (an empty table answers NXDOMAIN to everything).
        self.dns = dict(dns or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._log_file = None
        self.write_config()
        _live_servers.add(self)
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    # ---- files and paths

    @property
    def config_path(self) -> Path:
        return self.data / "tandem.toml"

    @property
    def cert_path(self) -> Path:
        return self.data / "tls" / "cert.pem"

    @property
    def slot_dir(self) -> Path:
        return self.data / "slots" / "s1"

    @property
    def blobs_dir(self) -> Path:
        return self.slot_dir / "blobs"

    @property
    def events_path(self) -> Path:
        return self.data / "events.jsonl"

    def write_config(self) -> None:
        lines = []
        if self.allow_plaintext_auth:
            lines.append("allow_plaintext_auth = true")
        lines.append(self.extra_toml)
        lines.append("[dns.static]")
        for name, records in self.dns.items():
            lines.append(f"{json.dumps(name)} = {json.dumps(records)}")
        lines.append("[listen]")
        for k, v in self.listen.items():
            lines.append(f'{k} = "{v}"')
        self.config_path.write_text("\n".join(lines) + "\n")

    def blob_files(self) -> list[Path]:
        """Every stored blob (`blobs/<2 hex>/<64 hex>`), sorted; temp files excluded."""
        out = []
        if self.blobs_dir.is_dir():
            for d in self.blobs_dir.iterdir():
                if d.is_dir() and re.fullmatch(r"[0-9a-f]{2}", d.name):
                    out.extend(f for f in d.iterdir() if re.fullmatch(r"[0-9a-f]{64}", f.name))
        return sorted(out)

    def blob_of(self, content: bytes) -> Path:
        """The blob file that holds exactly `content` (blobs are the raw message bytes)."""
        for f in self.blob_files():
            if f.stat().st_size == len(content) and f.read_bytes() == content:
                return f
        raise AssertionError(f"no blob file holds this {len(content)}-byte message")

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append({"level": "unparseable", "raw": line})
        return out

    def alerts(self) -> list[dict]:
        return [e for e in self.events() if e.get("level") == "alert"]

    def log(self) -> str:
        if self._log_file:
            self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    # ---- process control

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> subprocess.Popen:
        """Starts `serve` without waiting for readiness (for tests that expect failure)."""
        if self.running():
            raise ServerError("server already running")
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"---- start #{self.starts + 1}\n".encode())
        self._log_file.flush()
        # Runner signals (see run.py) are held off while spawning, so an interrupt can never
        # leave a started server that `self.proc` does not know about.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _RUNNER_SIGNALS)
        try:
            self.proc = subprocess.Popen(
                [tandem_bin(), "--data", str(self.data), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for the test runner must not hit the server
                # directly. Parent-death signal: even a SIGKILLed runner leaves no server behind.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self.starts += 1
        return self.proc

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        why = check_binary()
        if why:
            raise ServerError(why)
        self.spawn()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while pending:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise ServerError(f"tandem serve exited with {rc} during start-up:\n{self.log_tail()}")
            for k, p in list(pending.items()):
                if port_accepts(p):
                    del pending[k]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tandem serve did not accept on {sorted(pending)} within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit code. Raises if it does not exit in time
        (after SIGKILLing it, so the test can carry on cleaning up)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise ServerError(f"tandem did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, kill: bool = False) -> None:
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def rss_kib(self) -> int | None:
        """Resident memory of the server process, from /proc."""
        if not self.running():
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def close(self) -> None:
        try:
            self.kill()
        finally:
            if self._log_file:
                self._log_file.close()
                self._log_file = None
            _live_servers.discard(self)
            if os.environ.get("TANDEM_E2E_KEEP") == "1":
                print(f"\n[e2e] kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- CLI

    def cli(self, *args: str, input: bytes | str | None = None, timeout: float = CLI_TIMEOUT_S,
            data: Path | None = None) -> subprocess.CompletedProcess:
        if isinstance(input, str):
            input = input.encode()
        return subprocess.run(
            [tandem_bin(), "--data", str(data or self.data), *args],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
        )

    def add_user(self, address: str, password: str) -> None:
        r = self.cli("user", "add", address, "--password-stdin", input=password + "\n")
        if r.returncode != 0:
            raise ServerError(f"user add {address} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")

    # ---- clients

    def imaps(self, user: str | None = None, password: str | None = None, timeout: float = IO_TIMEOUT_S) -> imaplib.IMAP4_SSL:
        return imaps_connect(self.ports["imaps"], user, password, timeout)

    def imap_plain(self, timeout: float = IO_TIMEOUT_S) -> imaplib.IMAP4:
        return imaplib.IMAP4(HOST, self.ports["imap"], timeout=timeout)

    def imap_starttls(self, user: str | None = None, password: str | None = None,
                      timeout: float = IO_TIMEOUT_S) -> imaplib.IMAP4:
        """Plain port, STARTTLS (certificate not verified), then LOGIN if a user is given."""
        m = self.imap_plain(timeout)
        m.starttls(ssl_context=unverified_context())
        if user is not None:
            m.login(user, password)
        return m

    def lmtp(self, timeout: float = IO_TIMEOUT_S) -> "Lmtp":
        return Lmtp(HOST, self.ports["lmtp"], timeout=timeout)

    def deliver(self, rcpts: str | list[str], message: bytes, mail_from: str = "sender@example.net") -> "LmtpResult":
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        with self.lmtp() as l:
            return l.transaction(mail_from, rcpts, message)

    def deliver_many(self, rcpt: str, messages: list[bytes], mail_from: str = "sender@example.net") -> None:
        """Delivers each message in its own transaction over one LMTP connection; raises
        unless every one got 250."""
        with self.lmtp() as l:
            for i, msg in enumerate(messages):
                r = l.transaction(mail_from, [rcpt], msg)
                if not r.all_delivered():
                    raise AssertionError(f"LMTP delivery {i} to {rcpt} failed: {r}")

    def raw_imap(self, tls: bool = True, timeout: float = IO_TIMEOUT_S) -> "RawImap":
        port = self.ports["imaps"] if tls else self.ports["imap"]
        return RawImap(HOST, port, tls=tls, timeout=timeout)


# --------------------------------------------------------------------------------------
# LMTP

@dataclass
class LmtpResult:
    """Replies of one LMTP transaction: per recipient at RCPT, and per accepted recipient
    after DATA (LMTP answers DATA once per accepted recipient, RFC 2033)."""

    rcpt: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    data: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def delivered(self, rcpt: str) -> bool:
        return self.data.get(rcpt, (0, b""))[0] == 250

    def all_delivered(self) -> bool:
        return bool(self.rcpt) and all(self.delivered(r) for r in self.rcpt)


def dot_stuff(message: bytes) -> bytes:
    """DATA payload: CRLF line ends, leading dots doubled, terminated by `.` line."""
    m = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not m.endswith(b"\r\n"):
        m += b"\r\n"
    m = re.sub(rb"(?m)^\.", b"..", m)
    return m + b".\r\n"


class Lmtp(smtplib.LMTP):
    """smtplib.LMTP with a transaction that reads one DATA reply per accepted recipient
    (smtplib's own sendmail reads only one, which desynchronises LMTP)."""

    def __init__(self, host: str, port: int, timeout: float = IO_TIMEOUT_S):
        super().__init__(host, port, timeout=timeout)

    def __exit__(self, exc_type, *rest) -> None:
        # smtplib's own __exit__ sends QUIT and raises on an unexpected reply, which would
        # hide the real error of an interrupted transaction behind a stale reply.
        if exc_type is not None:
            self.close()
            return
        try:
            self.quit()
        except (OSError, smtplib.SMTPException):
            self.close()

    def transaction(self, mail_from: str, rcpts: list[str], message: bytes) -> LmtpResult:
        self.ehlo_or_helo_if_needed()
        res = LmtpResult()
        code, resp = self.mail(mail_from)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, resp, mail_from)
        accepted = []
        for r in rcpts:
            code, resp = self.rcpt(r)
            res.rcpt[r] = (code, resp)
            if code == 250:
                accepted.append(r)
        if not accepted:
            self.rset()
            return res
        code, resp = self.docmd("data")
        if code != 354:
            raise smtplib.SMTPDataError(code, resp)
        self.send(dot_stuff(message))
        for r in accepted:
            res.data[r] = self.getreply()
        return res


# --------------------------------------------------------------------------------------
# SMTP: clients for the MX and submission listeners, and a sink to send to

def smtp_mx(server: "Server", timeout: float = IO_TIMEOUT_S) -> smtplib.SMTP:
    """A plain SMTP connection to the server's MX listener (EHLO not yet sent)."""
    return smtplib.SMTP(HOST, server.ports["smtp"], local_hostname="client.e2e.test", timeout=timeout)


def smtp_submission(server: "Server", user: str | None = None, password: str | None = None,
                    timeout: float = IO_TIMEOUT_S) -> smtplib.SMTP:
    """Port 587 style: STARTTLS (certificate not verified), then AUTH if a user is given."""
    s = smtplib.SMTP(HOST, server.ports["submission"], local_hostname="laptop.e2e.test", timeout=timeout)
    s.starttls(context=unverified_context())
    if user is not None:
        s.login(user, password)
    return s


def smtp_submissions(server: "Server", user: str | None = None, password: str | None = None,
                     timeout: float = IO_TIMEOUT_S) -> smtplib.SMTP_SSL:
    """Port 465 style: TLS from the first byte, then AUTH if a user is given."""
    s = smtplib.SMTP_SSL(HOST, server.ports["submissions"], local_hostname="laptop.e2e.test",
                         context=unverified_context(), timeout=timeout)
    if user is not None:
        s.login(user, password)
    return s


class SmtpSink:
    """A tiny SMTP server on loopback that plays "the remote domain" for outbound tests.

    `policy(rcpt) -> (code, text)` answers RCPT (default 250); `data_reply` answers the final
    dot (default 250); with `stall` set the sink waits that long before answering the dot.
    A message counts as received only once the sink's 250 to the dot was sent, like a real
    server. Received messages: `self.messages` (list of dicts: mail_from, rcpts, data,
    tls=False). Runs in a thread; `close()` stops it.
    """

    def __init__(self, policy=None, data_reply: tuple[int, str] = (250, "2.0.0 ok"),
                 stall: float = 0.0, port: int = 0):
        import threading
        self.policy = policy or (lambda rcpt: (250, "2.1.5 ok"))
        self.data_reply = data_reply
        self.stall = stall
        self.messages: list[dict] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.closed:
                conn.close()
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT_S)
        f = conn.makefile("rb")
        send = lambda line: conn.sendall(line.encode() + b"\r\n")  # noqa: E731
        try:
            send("220 sink.e2e.test ESMTP sink")
            mail_from, rcpts = None, []
            while True:
                line = f.readline(4096)
                if not line:
                    return
                cmd = line.decode(errors="replace").strip()
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    send("250-sink.e2e.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000")
                elif verb == "MAIL":
                    mail_from, rcpts = cmd[cmd.index("<") + 1:cmd.index(">")], []
                    send("250 2.1.0 ok")
                elif verb == "RCPT":
                    rcpt = cmd[cmd.index("<") + 1:cmd.index(">")]
                    code, text = self.policy(rcpt)
                    if code == 250:
                        rcpts.append(rcpt)
                    send(f"{code} {text}")
                elif verb == "DATA":
                    send("354 go ahead")
                    data = b""
                    while True:
                        l = f.readline(1 << 20)
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        data += l[1:] if l.startswith(b".") else l
                    if self.stall:
                        time.sleep(self.stall)
                        # Like a real server, commit only if the client is still there: a
                        # client that died before our reply never saw the message accepted.
                        try:
                            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                                return
                        except BlockingIOError:
                            pass
                    code, text = self.data_reply
                    send(f"{code} {text}")
                    if code == 250:
                        with self.lock:
                            self.messages.append({"mail_from": mail_from, "rcpts": list(rcpts), "data": data})
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    send("250 ok")
                elif verb == "QUIT":
                    send("221 bye")
                    return
                else:
                    send("502 5.5.1 not implemented")
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def received(self) -> list[dict]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.closed = True
        # close() alone does not wake a thread blocked in accept(): the socket would keep
        # listening and answer one more connection with this sink's policy. shutdown()
        # wakes it (EINVAL), then the thread is joined so the port is really released.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(5)

    def __enter__(self) -> "SmtpSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# IMAP via imaplib

def unverified_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imaps_connect(port: int, user: str | None = None, password: str | None = None,
                  timeout: float = IO_TIMEOUT_S) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL(HOST, port, ssl_context=unverified_context(), timeout=timeout)
    if user is not None:
        m.login(user, password)
    return m


def check(resp: tuple, what: str = "") -> list:
    """Asserts an imaplib (typ, data) is OK and returns data."""
    typ, data = resp
    if typ != "OK":
        raise AssertionError(f"{what or 'command'} answered {typ}: {data!r}")
    return data


def select(m: imaplib.IMAP4, mailbox: str = "INBOX", readonly: bool = False) -> dict:
    """SELECT/EXAMINE; returns EXISTS, UIDVALIDITY, UIDNEXT, FLAGS from the responses."""
    typ, data = m.select(quote_mailbox(mailbox), readonly=readonly)
    if typ != "OK":
        raise AssertionError(f"SELECT {mailbox} answered {typ}: {data!r}")
    out = {"EXISTS": int(data[0])}
    for key in ("UIDVALIDITY", "UIDNEXT"):
        v = m.untagged_responses.get(key)
        if v:
            out[key] = int(v[-1])
    return out


def quote_mailbox(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9/._-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def response_code(data: list, code: str) -> list[bytes] | None:
    """Finds `[CODE a b c]` in tagged response text; returns its arguments."""
    for d in data:
        if isinstance(d, tuple):
            d = d[0]
        if not isinstance(d, bytes):
            continue
        mm = re.search(rb"\[" + code.encode() + rb"(?: ([^\]]*))?\]", d, re.I)
        if mm:
            return (mm.group(1) or b"").split()
    return None


def tagged_code(m: imaplib.IMAP4, data: list, code: str) -> list[bytes] | None:
    """A response code of the last tagged reply. imaplib drops the tagged text for UID
    commands but files its `[CODE ...]` under untagged_responses[CODE]; look in both."""
    found = response_code(data, code)
    if found is None and m.untagged_responses.get(code):
        found = m.untagged_responses[code][-1].split()
    return found


def parse_uid_set(s: bytes | str) -> list[int]:
    """`1:3,7` → [1, 2, 3, 7] (order kept as written, as COPYUID pairs sets by position)."""
    if isinstance(s, bytes):
        s = s.decode()
    out = []
    for part in s.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            step = 1 if b >= a else -1
            out.extend(range(a, b + step, step))
        else:
            out.append(int(part))
    return out


def uid_set(uids) -> str:
    """[1, 2, 3, 7] → `1:3,7`."""
    out, run = [], []
    for u in sorted(set(uids)):
        if run and u == run[-1] + 1:
            run.append(u)
        else:
            if run:
                out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
            run = [u]
    if run:
        out.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


# ---- a small parser for IMAP response data (FETCH, LIST, STATUS) --------------------

class Literal(bytes):
    """A literal's bytes, kept distinct from atoms in parsed responses."""


def _segments_of(data: list) -> list[list[tuple[bytes, bytes | None]]]:
    """imaplib splits one response with literals into (text, literal) tuples followed by a
    bytes trailer; regroup into one list of segments per response."""
    responses, cur = [], []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            cur.append((item[0], item[1]))
        else:
            cur.append((item, None))
            responses.append(cur)
            cur = []
    if cur:
        responses.append(cur)
    return responses


def tokenize(segments: list[tuple[bytes, bytes | None]]) -> list:
    """Parses IMAP data into nested Python lists. Atoms are bytes (a bracketed section such
    as `BODY[HEADER.FIELDS (FROM)]` stays one atom), quoted strings are bytes, literals are
    `Literal`, NIL is None."""
    stack: list[list] = [[]]
    for text, lit in segments:
        t = text
        if lit is not None:
            # drop the `{n}` announcement at the end of the text part
            t = re.sub(rb"\{\d+\+?\}$", b"", t)
        i = 0
        n = len(t)
        while i < n:
            c = t[i:i + 1]
            if c in (b" ", b"\r", b"\n"):
                i += 1
            elif c == b"(":
                stack.append([])
                i += 1
            elif c == b")":
                done = stack.pop()
                stack[-1].append(done)
                i += 1
            elif c == b'"':
                j = i + 1
                buf = bytearray()
                while j < n and t[j:j + 1] != b'"':
                    if t[j:j + 1] == b"\\":
                        j += 1
                    buf += t[j:j + 1]
                    j += 1
                stack[-1].append(bytes(buf))
                i = j + 1
            else:
                j = i
                depth = 0
                while j < n:
                    ch = t[j:j + 1]
                    if ch == b"[":
                        depth += 1
                    elif ch == b"]":
                        depth -= 1
                    elif depth == 0 and ch in (b" ", b"(", b")"):
                        break
                    j += 1
                atom = t[i:j]
                stack[-1].append(None if atom.upper() == b"NIL" else atom)
                i = j
        if lit is not None:
            stack[-1].append(Literal(lit))
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def parse_fetch(data: list) -> list[dict]:
    """imaplib FETCH data → [{'SEQ': n, 'UID': u, 'FLAGS': [...], 'BODY[]': bytes, ...}]."""
    out = []
    for segs in _segments_of(data):
        toks = tokenize(segs)
        if len(toks) < 2 or not isinstance(toks[1], list):
            continue
        d: dict = {"SEQ": int(toks[0])}
        kv = toks[1]
        for k in range(0, len(kv) - 1, 2):
            key = kv[k].decode().upper() if isinstance(kv[k], bytes) else str(kv[k])
            val = kv[k + 1]
            if key in ("UID", "RFC822.SIZE", "MODSEQ"):
                val = int(val[0] if isinstance(val, list) else val)
            elif key == "FLAGS":
                val = [f.decode() for f in val]
            elif key.startswith("BODY.PEEK"):
                key = "BODY" + key[len("BODY.PEEK"):]
            d[key] = bytes(val) if isinstance(val, Literal) else val
        out.append(d)
    return out


def fetch(m: imaplib.IMAP4, uids: str, items: str, uid: bool = True) -> list[dict]:
    if uid:
        data = check(m.uid("FETCH", uids, items), f"UID FETCH {uids} {items}")
    else:
        data = check(m.fetch(uids, items), f"FETCH {uids} {items}")
    return parse_fetch(data)


def fetch_bodies(m: imaplib.IMAP4, uids: str = "1:*") -> dict[int, bytes]:
    """UID → exact bytes, without setting \\Seen."""
    out = {}
    for d in fetch(m, uids, "(UID BODY.PEEK[])"):
        if "UID" in d and "BODY[]" in d:
            out[d["UID"]] = d["BODY[]"]
    return out


def fetch_flags(m: imaplib.IMAP4, uids: str = "1:*") -> dict[int, set[str]]:
    """UID → stored flags. `\\Recent` is left out: it is a per-session flag (RFC 3501) that
    a server may or may not report, not something a client stores."""
    return {d["UID"]: set(d.get("FLAGS", [])) - {"\\Recent"} for d in fetch(m, uids, "(UID FLAGS)") if "UID" in d}


def search(m: imaplib.IMAP4, *criteria: str, uid: bool = False) -> list[int]:
    if uid:
        data = check(m.uid("SEARCH", *criteria), f"UID SEARCH {criteria}")
    else:
        data = check(m.search(None, *criteria), f"SEARCH {criteria}")
    nums: list[int] = []
    for d in data:
        if d:
            nums.extend(int(x) for x in d.split())
    return sorted(nums)


def list_mailboxes(m: imaplib.IMAP4, ref: str = '""', pattern: str = '"*"', cmd: str = "LIST") -> dict[str, dict]:
    """name → {'attrs': set, 'delim': str}."""
    if cmd == "LIST":
        data = check(m.list(ref, pattern), "LIST")
    else:
        data = check(m.lsub(ref, pattern), "LSUB")
    out = {}
    for segs in _segments_of(data):
        toks = tokenize(segs)
        if len(toks) < 3:
            continue
        attrs = {a.decode() for a in toks[0]} if isinstance(toks[0], list) else set()
        delim = toks[1].decode() if isinstance(toks[1], bytes) else None
        name = toks[2]
        name = name.decode() if isinstance(name, (bytes, Literal)) else str(name)
        out[name] = {"attrs": attrs, "delim": delim}
    return out


def status(m: imaplib.IMAP4, mailbox: str, items: str = "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)") -> dict[str, int]:
    data = check(m.status(quote_mailbox(mailbox), items), f"STATUS {mailbox}")
    toks = tokenize(_segments_of(data)[0])
    kv = toks[-1]
    return {kv[i].decode().upper(): int(kv[i + 1]) for i in range(0, len(kv) - 1, 2)}


def crlf(b: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", b)


# --------------------------------------------------------------------------------------
# a tiny raw IMAP client, for input no real client would send

class RawImap:
    """Line-level IMAP over a socket (optionally TLS). Sends exactly the bytes given."""

    def __init__(self, host: str, port: int, tls: bool = True, timeout: float = IO_TIMEOUT_S):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            sock = unverified_context().wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = b""
        self.timeout = timeout
        self.closed = False
        self.tag_n = 0
        self.greeting = self.readline()

    def next_tag(self) -> str:
        self.tag_n += 1
        return f"r{self.tag_n}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def readline(self, timeout: float | None = None) -> bytes:
        """One line without CRLF; b'' once the server has closed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            if self.closed or not self._fill(deadline):
                line, self.buf = self.buf, b""
                return line
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            if self.closed or not self._fill(deadline):
                break
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, timeout: float | None = None) -> tuple[bytes, list[bytes]]:
        """One response line with any literals read in: (line with literals inline, literals)."""
        line = self.readline(timeout)
        lits = []
        while True:
            mm = re.search(rb"\{(\d+)\}$", line)
            if not mm:
                break
            lit = self.read_exact(int(mm.group(1)), timeout)
            lits.append(lit)
            line = line + b"\r\n" + lit + self.readline(timeout)
        return line, lits

    def command(self, text: bytes | str, tag: str | None = None, timeout: float | None = None):
        """Sends `TAG text CRLF`; returns (untagged responses, tagged line, literals).
        The tagged line is b'' if the server closed first."""
        if isinstance(text, str):
            text = text.encode()
        tag = tag or self.next_tag()
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.collect(tag, timeout)

    def collect(self, tag: str, timeout: float | None = None):
        untagged, lits = [], []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line, l = self.read_response(max(0.05, deadline - time.monotonic()))
            lits.extend(l)
            if line == b"" and self.closed:
                return untagged, b"", lits
            if line.startswith(tag.encode() + b" "):
                return untagged, line, lits
            untagged.append(line)

    def start_tls(self) -> None:
        """Switches this connection to TLS (after the server's OK to STARTTLS)."""
        if self.buf:
            raise AssertionError(f"plaintext left over before the TLS handshake: {self.buf!r}")
        self.sock = unverified_context().wrap_socket(self.sock, server_hostname="localhost")

    def login(self, user: str, password: str) -> None:
        _, tagged, _ = self.command(f"LOGIN {qstr(user)} {qstr(password)}")
        if b" OK" not in tagged:
            raise AssertionError(f"LOGIN failed: {tagged!r}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def abort(self) -> None:
        """Closes with a RST (SO_LINGER 0): the most abrupt disconnect a client can do."""
        try:
            raw = self.sock
            if isinstance(raw, ssl.SSLSocket):
                raw = socket.socket(fileno=raw.detach())
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            raw.close()
        except OSError:
            pass
        self.closed = True

    def __enter__(self) -> "RawImap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def qstr(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------
# deterministic messages

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu mail store "
    "slot replica master epoch digest journal commit fsync blob index record quota sieve"
).split()
_UTF8_LINES = [
    "Grüße aus Zürich, naïve café — très bien ✓",
    "Ελληνικά: καλημέρα κόσμε",
    "日本語: こんにちは世界、メールのテストです",
    "Русский: съешь же ещё этих мягких французских булок",
    "Emoji: 📬 ✉️ 🦀",
]


class MessageFactory:
    """Messages as a pure function of (seed, index): plain ASCII, 8-bit UTF-8, and multipart
    with a base64 attachment, in turn. CRLF line ends, as stored by the server."""

    KINDS = ("plain", "utf8", "multipart")

    def __init__(self, seed: int = 20261128, to: str = f"alice@{DOMAIN}"):
        self.seed = seed
        self.to = to

    def token(self, i: int) -> str:
        """A word that occurs only in message i's body (for SEARCH BODY)."""
        return f"tok{self.seed % 100000}x{i}q"

    def message_id(self, i: int) -> str:
        return f"<e2e.{self.seed}.{i}@example.net>"

    def message(self, i: int, kind: str | None = None, subject: str | None = None,
                from_: str | None = None, to: str | None = None, date: datetime.datetime | None = None,
                extra_body: str = "") -> bytes:
        rng = random.Random(f"{self.seed}:{i}")
        kind = kind or self.KINDS[i % len(self.KINDS)]
        words = " ".join(rng.choice(_WORDS) for _ in range(6))
        subject = subject if subject is not None else f"Message {i}: {words}"
        from_ = from_ or f"Sender {i} <sender{i}@example.net>"
        date = date or datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=i)
        hdr = [
            f"From: {from_}",
            f"To: {to or self.to}",
            f"Date: {email.utils.format_datetime(date)}",
            f"Message-ID: {self.message_id(i)}",
        ]
        body_lines = [
            f"Message number {i} of the e2e suite.",
            f"Token: {self.token(i)}",
        ]
        if extra_body:
            body_lines.append(extra_body)
        for _ in range(rng.randint(2, 12)):
            body_lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 14))))
        # Dot transparency: LMTP must un-stuff these back to the original bytes.
        body_lines += [".", ".leading dot line", ""]
        body_lines.append("x" * rng.randint(70, 900))  # a long (but legal, < 998) line
        if kind == "plain":
            hdr += [f"Subject: {subject}", "MIME-Version: 1.0",
                    "Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
            body = "\r\n".join(body_lines)
        elif kind == "utf8":
            subj = subject + " — " + rng.choice(_UTF8_LINES)[:20]
            enc = base64.b64encode(subj.encode()).decode()
            hdr += [f"Subject: =?UTF-8?B?{enc}?=", "MIME-Version: 1.0",
                    "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            body = "\r\n".join(body_lines[:2] + rng.sample(_UTF8_LINES, 3) + body_lines[2:])
        elif kind == "multipart":
            boundary = f"=_e2e_{self.seed}_{i}_{rng.randrange(1 << 30):x}"
            attach = bytes(rng.randrange(256) for _ in range(rng.randint(200, 20000)))
            b64 = base64.b64encode(attach).decode()
            b64_lines = [b64[k:k + 76] for k in range(0, len(b64), 76)]
            hdr += [f"Subject: {subject}", "MIME-Version: 1.0",
                    f'Content-Type: multipart/mixed; boundary="{boundary}"']
            parts = [
                "This is a multi-part message in MIME format.",
                f"--{boundary}",
                "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: 8bit",
                "",
                *body_lines,
                f"--{boundary}",
                f'Content-Type: application/octet-stream; name="data{i}.bin"',
                "Content-Transfer-Encoding: base64",
                f'Content-Disposition: attachment; filename="data{i}.bin"',
                "",
                *b64_lines,
                f"--{boundary}--",
            ]
            body = "\r\n".join(parts)
        else:
            raise ValueError(kind)
        return ("\r\n".join(hdr) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


def wait_until(pred, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# test base

import unittest  # noqa: E402  (kept next to its only user)


class ServerTestCase(unittest.TestCase):
    """One server per test class (start-up costs a second); each test makes its own users
    so tests stay independent. The server must still be running after every test.

    Note: the server throttles logins after 3 failures from one IP, so a class should fail
    at most 3 logins on purpose."""

    server_kwargs: dict = {}
    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server(**cls.server_kwargs)
        cls.addClassCleanup(cls.server.close)
        cls._user_n = 0

    def tearDown(self) -> None:
        if not self.server.running():
            rc = self.server.proc.returncode if self.server.proc else None
            # Bring it back so the next test of the class is not failed by this one.
            log = self.server.log_tail()
            try:
                self.server.start()
            except ServerError:
                pass
            self.fail(f"the server died during {self.id()} (exit {rc}):\n{log}")

    def new_user(self, password: str = "pw-Secret-1") -> tuple[str, str]:
        type(self)._user_n += 1
        name = re.sub(r"[^a-z0-9]", "", self._testMethodName.lower().removeprefix("test_"))[:24]
        addr = f"{name}{type(self)._user_n}@{DOMAIN}"
        self.server.add_user(addr, password)
        return addr, password

    def login(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        m = self.server.imaps(user, password)
        self.addCleanup(_logout_quietly, m)
        return m


def _logout_quietly(m: imaplib.IMAP4) -> None:
    try:
        m.logout()
    except Exception:
        try:
            m.shutdown()
        except Exception:
            pass


# --------------------------------------------------------------------------------------
# several hosts: a cluster on one machine

class Cluster:
    """Several `tandem serve` hosts on this machine replicating slots per one shared
    `cluster.toml`. Each host is a `Server` with its own data directory; its identity is
    `host = "NAME"` in its tandem.toml, and its replication listener is on its own loopback
    address (127.0.0.2, 127.0.0.3, ... — Linux routes all of 127/8 to loopback). Clients
    reach each host's IMAP/LMTP on 127.0.0.1 ports as with a single `Server`.

    The cluster CA is made on the first host (`tandem cluster ca init`); every host gets
    its certificate (`tandem cluster cert issue NAME --out HOST/cluster`) and `ca.pem`.
    `slots_toml` is the `[slots.*]` part of cluster.toml; `write_cluster` replaces it (to
    move a master, with a higher epoch). Nothing is started until `start(name)`.
    """

    def __init__(self, hosts: list[str], slots_toml: str):
        self.tmp = Path(tempfile.mkdtemp(prefix="tandem-e2e-cluster-"))
        self.config_path = self.tmp / "cluster.toml"
        self.repl_addr = {h: f"127.0.0.{i + 2}:{free_port()}" for i, h in enumerate(hosts)}
        self.servers: dict[str, Server] = {}
        try:
            for h in hosts:
                extra = f'host = "{h}"\n[cluster]\nconfig = "{self.config_path}"\nio_timeout_secs = 10\n'
                self.servers[h] = Server(start=False, extra_toml=extra)
            first = self.servers[hosts[0]]
            self._cli_ok(first, "cluster", "ca", "init")
            ca = first.data / "cluster" / "ca.pem"
            for h in hosts:
                out = self.servers[h].data / "cluster"
                self._cli_ok(first, "cluster", "cert", "issue", h, "--out", str(out))
                if h != hosts[0]:
                    shutil.copy(ca, out / "ca.pem")
            self.write_cluster(slots_toml)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _cli_ok(s: Server, *args: str) -> subprocess.CompletedProcess:
        r = s.cli(*args)
        if r.returncode != 0:
            raise ServerError(f"tandem {' '.join(args)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
        return r

    def __getitem__(self, name: str) -> Server:
        return self.servers[name]

    def write_cluster(self, slots_toml: str) -> None:
        lines = []
        for i, (h, addr) in enumerate(self.repl_addr.items()):
            lines += [f"[hosts.{h}]", f'datacentre = "dc{i % 2}"', f'replication = "{addr}"', ""]
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n" + slots_toml + "\n")
        tmp.replace(self.config_path)

    def start(self, *names: str) -> None:
        for n in names or tuple(self.servers):
            self.servers[n].start()

    def shared_state(self) -> bool:
        """The hosts follow a cluster state (`[cluster] state = ...`), which holds the
        account directory; each host mirrors it into its own `directory` file."""
        return any("\nstate = " in s.extra_toml for s in self.servers.values())

    def add_user(self, address: str, password: str) -> None:
        """With a cluster state: once, then wait until every running host mirrored it.
        Without: on every host (each host has its own account directory)."""
        if not self.shared_state():
            for s in self.servers.values():
                s.add_user(address, password)
            return
        next(iter(self.servers.values())).add_user(address, password)
        needle = f'"address":"{address.lower()}"'

        def mirrored() -> bool:
            for s in self.servers.values():
                if s.proc is None or s.proc.poll() is not None:
                    continue
                try:
                    if needle not in (s.data / "directory").read_text(errors="replace"):
                        return False
                except OSError:
                    return False
            return True

        if not wait_until(mirrored, 15.0, interval=0.05):
            raise ServerError(f"{address} did not reach every host's directory within 15 s")

    def status(self, name: str) -> list[dict]:
        r = self._cli_ok(self.servers[name], "status", "--json")
        return json.loads(r.stdout)

    def synced(self, master: str, slot: str = "s1") -> bool:
        """True when every replica of `slot` on `master` is connected, confirmed every
        change, and is not in the middle of a full compare."""
        try:
            st = [s for s in self.status(master) if s["slot"] == slot]
        except (ServerError, json.JSONDecodeError, subprocess.TimeoutExpired):
            return False
        return bool(st) and st[0]["role"] == "master" and all(
            r["connected"] and r["lag_changes"] == 0 and r["progress"] is None and r["last_sync_unix"]
            for r in st[0]["replicas"]
        )

    def wait_synced(self, master: str, timeout: float = 60.0, slot: str = "s1") -> None:
        if not wait_until(lambda: self.synced(master, slot), timeout, interval=0.2):
            raise AssertionError(
                f"replicas of {slot} on {master} did not catch up in {timeout}s: {self.status(master)}\n"
                + "\n".join(f"--- {n}\n{s.log_tail(15)}" for n, s in self.servers.items())
            )

    def verify(self, master: str) -> subprocess.CompletedProcess:
        return self.servers[master].cli("cluster", "verify")

    def events(self, name: str, kind: str) -> list[dict]:
        return [e for e in self.servers[name].events() if e.get("kind") == kind]

    def close(self) -> None:
        for s in self.servers.values():
            try:
                s.close()
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# etcd (the cluster-state backend of multi-machine clusters)

ETCD_START_TIMEOUT_S = 30.0


def _tandem_has_etcd() -> bool:
    """Whether the tandem binary was built with the `etcd` feature (asked, not guessed: a
    build without it says so when pointed at an etcd state)."""
    d = Path(tempfile.mkdtemp(prefix="tandem-e2e-probe-"))
    try:
        (d / "tandem.toml").write_text('[cluster]\nstate = "etcd://127.0.0.1:1/probe"\n')
        r = subprocess.run([tandem_bin(), "--data", str(d), "cluster", "state"],
                           capture_output=True, timeout=CLI_TIMEOUT_S)
        return b"built without etcd support" not in r.stdout + r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def etcd_missing() -> str | None:
    """None when an `etcd` binary (Debian etcd-server) is there and tandem was built with
    the `etcd` feature, else why not. With TANDEM_REQUIRE_ETCD=1 either is an error, not a
    reason to skip."""
    why = None
    if not shutil.which("etcd"):
        why = "no etcd binary: apt-get install etcd-server"
    elif not _tandem_has_etcd():
        why = f"{tandem_bin()} was built without etcd: cargo build -p tandem --features etcd"
    if why and os.environ.get("TANDEM_REQUIRE_ETCD") == "1":
        raise ServerError(f"TANDEM_REQUIRE_ETCD=1 but {why}")
    return why


class Etcd:
    """A throwaway single-member etcd on free 127.0.0.1 ports, its data in a temp dir;
    `close()` kills it and removes the dir. `spec(prefix)` is a `[cluster] state` value:
    several clusters can share one etcd under different prefixes."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="tandem-e2e-etcd-"))
        self.client_port, self.peer_port = free_port(), free_port()
        self.endpoint = f"{HOST}:{self.client_port}"
        self._log = open(self.tmp / "etcd.log", "ab")
        peer = f"http://{HOST}:{self.peer_port}"
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _RUNNER_SIGNALS)
        try:
            self.proc = subprocess.Popen(
                ["etcd", "--name", "e2e", "--data-dir", str(self.tmp / "data"),
                 f"--listen-client-urls=http://{self.endpoint}",
                 f"--advertise-client-urls=http://{self.endpoint}",
                 f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                 f"--initial-cluster=e2e={peer}"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            if not wait_until(self.healthy, ETCD_START_TIMEOUT_S, interval=0.1):
                raise ServerError(f"etcd did not become healthy in {ETCD_START_TIMEOUT_S}s:\n"
                                  + (self.tmp / "etcd.log").read_text(errors="replace")[-2000:])
        except BaseException:
            self.close()
            raise

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise ServerError(f"etcd exited with {self.proc.returncode}:\n"
                              + (self.tmp / "etcd.log").read_text(errors="replace")[-2000:])
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def spec(self, prefix: str) -> str:
        return f"etcd://{self.endpoint}/{prefix}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        if os.environ.get("TANDEM_E2E_KEEP") == "1":
            print(f"\n[e2e] kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Etcd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
