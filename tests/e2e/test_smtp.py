"""SMTP end to end: MX inbound with SPF/DKIM/DMARC, authenticated submission (swaks and
smtplib over 587 and 465), the durable outbound queue against a loopback sink, and bad input.

Every server here answers mail DNS from a static table (harness default): nothing leaves the
host. "Remote" domains are a `SmtpSink` on loopback reached through `[outbound] relay`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import socket
import subprocess
import time
import unittest

from harness import (
    HOST,
    IO_TIMEOUT_S,
    Server,
    SmtpSink,
    fetch_bodies,
    free_port,
    list_mailboxes,
    select,
    smtp_mx,
    smtp_submission,
    smtp_submissions,
    unverified_context,
    wait_until,
)
import smtplib

SWAKS = shutil.which("swaks")


# --------------------------------------------------------------------------------------
# an independent DKIM verifier (RFC 6376, rsa-sha256, relaxed/relaxed), standard library only


def _der(b: bytes, i: int) -> tuple[int, bytes, int]:
    tag, length = b[i], b[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(b[i:i + n], "big")
        i += n
    return tag, b[i:i + length], i + length


def rsa_public_key(txt: str) -> tuple[int, int]:
    """(n, e) from a DKIM TXT record whose p= is a SubjectPublicKeyInfo."""
    p = re.search(r"p=([A-Za-z0-9+/=]+)", txt).group(1)
    _, spki, _ = _der(base64.b64decode(p), 0)
    _, _alg, j = _der(spki, 0)
    _, bits, _ = _der(spki, j)
    _, seq, _ = _der(bits[1:], 0)
    _, n, j = _der(seq, 0)
    _, e, _ = _der(seq, j)
    return int.from_bytes(n, "big"), int.from_bytes(e, "big")


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b"\r\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            out.append((name, value))
    return out


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    v = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip().lower() + b":" + v + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    lines = body.split(b"\r\n")
    if body.endswith(b"\r\n"):
        lines = lines[:-1]
    out = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in lines]
    while out and out[-1] == b"":
        out.pop()
    return b"".join(line + b"\r\n" for line in out)


def dkim_verify(message: bytes, txt: str) -> str:
    """'pass' or the reason it does not verify."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields = _fields(head)
    sigs = [(n, v) for n, v in fields if n.strip().lower() == b"dkim-signature"]
    if len(sigs) != 1:
        return f"expected one DKIM-Signature, found {len(sigs)}"
    sig_name, sig_value = sigs[0]
    tags = {}
    for part in re.sub(rb"\s+", b"", sig_value).split(b";"):
        if b"=" in part:
            k, _, v = part.partition(b"=")
            tags[k.decode()] = v.decode()
    if tags.get("a") != "rsa-sha256" or tags.get("c") != "relaxed/relaxed":
        return f"unexpected algorithm {tags.get('a')} / {tags.get('c')}"
    bh = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
    if bh != tags["bh"]:
        return "body hash mismatch"
    data = b""
    available = [(n.strip().lower(), v) for n, v in fields]
    for h in tags["h"].lower().split(":"):
        for k in range(len(available) - 1, -1, -1):
            if available[k][0] == h.encode():
                data += _relaxed_header(h.encode(), available[k][1])
                available.pop(k)
                break
    empty_b = re.sub(rb"(^|;)(\s*b\s*=)[^;]*", rb"\1\2", sig_value)
    data += _relaxed_header(sig_name, empty_b)[:-2]
    n, e = rsa_public_key(txt)
    k = (n.bit_length() + 7) // 8
    em = pow(int.from_bytes(base64.b64decode(tags["b"]), "big"), e, n).to_bytes(k, "big")
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(data).digest()
    expected = b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info
    return "pass" if em == expected else "signature mismatch"


# --------------------------------------------------------------------------------------
# helpers


def swaks(*args: str, timeout: float = 60) -> tuple[int, str]:
    r = subprocess.run([SWAKS, "--timeout", "20", *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def dkim_txt(server: Server, domain: str) -> str:
    r = server.cli("dkim", "show", domain)
    assert r.returncode == 0, r.stderr.decode()
    return re.search(r'IN TXT "([^"]+)"', r.stdout.decode()).group(1)


def message(from_: str, to: str, subject: str, body: str = "hello\r\n", extra: str = "") -> bytes:
    return (f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@e2e.test>\r\n"
            f"{extra}\r\n{body}").encode()


class RawSmtp:
    """Line-level SMTP for input no real client would send."""

    def __init__(self, port: int, timeout: float = IO_TIMEOUT_S):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> str:
        lines = []
        while True:
            line = self.line()
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, text: str) -> str:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self, timeout: float = IO_TIMEOUT_S) -> bool:
        self.sock.settimeout(timeout)
        try:
            rest = b""
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                rest += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def abort(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def relay_server(cls, sink: SmtpSink, hostname: str, dkim_domain: str,
                 outbound: str = "") -> tuple[Server, str]:
    """A stopped server whose outbound mail goes to `sink`, with a DKIM key for `dkim_domain`
    (closed with the class); returns `dkim init`'s output."""
    server = Server(start=False, extra_toml=(
        f'hostname = "{hostname}"\n[outbound]\n'
        f'relay = "{HOST}:{sink.port}"\nretry_initial_ms = 200\n{outbound}'))
    cls.addClassCleanup(server.close)
    r = server.cli("dkim", "init", dkim_domain)
    assert r.returncode == 0, r.stderr.decode()
    return server, r.stdout.decode()


def inbox(server: Server, user: str, password: str, mailbox: str = "INBOX") -> list[bytes]:
    m = server.imaps(user, password)
    try:
        select(m, mailbox, readonly=True)
        return [b for _, b in sorted(fetch_bodies(m).items())]
    finally:
        m.logout()


# Outbound delivery and bounces go through the queue's scheduler (normally well under a
# second); the waits allow a minute so a loaded 2-core CI machine cannot fail them.
OUTBOUND_WAIT_S = 60


def wait_inbox(server: Server, user: str, password: str, n: int, timeout: float = OUTBOUND_WAIT_S,
               mailbox: str = "INBOX") -> list[bytes]:
    got = wait_until(lambda: len(inbox(server, user, password, mailbox)) >= n, timeout, 0.2)
    msgs = inbox(server, user, password, mailbox)
    assert got, f"{user} has {len(msgs)} messages in {mailbox}, expected {n}"
    return msgs


# --------------------------------------------------------------------------------------
# MX inbound


@unittest.skipUnless(SWAKS, "swaks is not installed (scripts/test installs it)")
class MxTests(unittest.TestCase):
    """A sending host B (domain sender.example, DKIM key) signs real mail; the MX under test,
    A, knows B's key, SPF and DMARC from its static DNS table."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.sink = SmtpSink()
        cls.addClassCleanup(cls.sink.close)
        cls.b, _ = relay_server(cls, cls.sink, "b.e2e.test", "sender.example")
        cls.b.start()
        cls.b.add_user("sam@sender.example", "pw-sam-1")
        txt = dkim_txt(cls.b, "sender.example")
        cls.a = Server(
            extra_toml='hostname = "mx.e2e.test"\n',
            dns={
                # B sends from 127.0.0.1, which sender.example's SPF does not list: a signed
                # message passes DMARC on DKIM alone, an unsigned one fails it.
                "sender.example": ["TXT v=spf1 ip4:192.0.2.1 -all"],
                "_dmarc.sender.example": ["TXT v=DMARC1; p=reject"],
                "tandem._domainkey.sender.example": [f"TXT {txt}"],
                "quar.example": ["TXT v=spf1 ip4:192.0.2.1 -all"],
                "_dmarc.quar.example": ["TXT v=DMARC1; p=quarantine"],
                "spf-ok.example": ["TXT v=spf1 ip4:127.0.0.1 -all"],
            },
        )
        cls.addClassCleanup(cls.a.close)
        cls.a.add_user("alice@example.com", "pw-alice-1")
        cls.a.add_user("carol@example.com", "pw-carol-1")
        # One signed message from B, captured at the sink, replayed to A by the tests.
        with smtp_submission(cls.b, "sam@sender.example", "pw-sam-1") as s:
            s.sendmail("sam@sender.example", ["alice@example.com"],
                       message("Sam <sam@sender.example>", "alice@example.com", "signed by b"))
        assert wait_until(lambda: cls.sink.received(), OUTBOUND_WAIT_S), cls.b.log_tail()
        cls.signed = cls.sink.received()[0]["data"]

    def mx_send(self, mail_from: str, rcpts: list[str], msg: bytes) -> dict:
        with smtp_mx(self.a) as s:
            return s.sendmail(mail_from, rcpts, msg)

    def auth_results(self, raw: bytes) -> str:
        head = raw.split(b"\r\n\r\n")[0].decode(errors="replace")
        m = re.search(r"Authentication-Results: mx\.e2e\.test;(.*?)\r\n(?=\S)", head, re.S)
        self.assertIsNotNone(m, head)
        return m.group(1)

    def test_swaks_delivers_to_a_local_user(self):
        rc, out = swaks("--server", f"{HOST}:{self.a.ports['smtp']}", "--from", "x@none.example",
                        "--to", "carol@example.com", "--header", "Subject: swaks to mx")
        self.assertEqual(rc, 0, out)
        self.assertIn("250 2.0.0 message accepted", out)
        msgs = inbox(self.a, "carol@example.com", "pw-carol-1")
        got = [m for m in msgs if b"Subject: swaks to mx" in m]
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].startswith(b"Return-Path: <x@none.example>\r\nReceived: from "), got[0][:200])
        self.assertIn(b"by mx.e2e.test (Tandem) with ESMTP", got[0])

    def test_smtplib_delivers_and_refuses_unknown_and_foreign_recipients(self):
        with smtp_mx(self.a) as s:
            refused = s.sendmail("x@none.example", ["carol@example.com", "nobody@example.com"],
                                 message("x@none.example", "carol@example.com", "smtplib to mx"))
            self.assertEqual(refused["nobody@example.com"][0], 550)
            self.assertIn(b"5.1.1", refused["nobody@example.com"][1])
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                s.sendmail("x@none.example", ["victim@elsewhere.example"], b"Subject: relay?\r\n\r\nx\r\n")
            code, text = cm.exception.recipients["victim@elsewhere.example"]
            self.assertEqual((code, text), (550, b"5.7.1 <victim@elsewhere.example>: relay not permitted"))
        rc, out = swaks("--server", f"{HOST}:{self.a.ports['smtp']}", "--from", "x@none.example",
                        "--to", "someone@elsewhere.example")
        self.assertNotEqual(rc, 0)
        self.assertIn("550 5.7.1 <someone@elsewhere.example>: relay not permitted", out)
        msgs = inbox(self.a, "carol@example.com", "pw-carol-1")
        self.assertEqual(sum(b"Subject: smtplib to mx" in m for m in msgs), 1)

    def test_signed_message_passes_dkim_and_dmarc(self):
        self.assertEqual(self.mx_send("sam@sender.example", ["alice@example.com"], self.signed), {})
        got = [m for m in inbox(self.a, "alice@example.com", "pw-alice-1") if b"signed by b" in m]
        self.assertEqual(len(got), 1)
        ar = self.auth_results(got[0])
        self.assertIn("dkim=pass header.d=sender.example header.s=tandem", ar)
        self.assertIn("spf=fail", ar)
        self.assertIn("dmarc=pass header.from=sender.example policy.dmarc=reject", ar)

    def test_forged_and_tampered_messages_are_rejected_by_dmarc(self):
        forged = message("Sam <sam@sender.example>", "alice@example.com", "forged")
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            self.mx_send("sam@sender.example", ["alice@example.com"], forged)
        self.assertEqual(cm.exception.smtp_code, 550)
        self.assertIn(b"5.7.1", cm.exception.smtp_error)
        self.assertIn(b"DMARC", cm.exception.smtp_error)
        tampered = self.signed.replace(b"hello", b"send money")
        self.assertNotEqual(tampered, self.signed)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            self.mx_send("sam@sender.example", ["alice@example.com"], tampered)
        self.assertEqual(cm.exception.smtp_code, 550)
        msgs = inbox(self.a, "alice@example.com", "pw-alice-1")
        self.assertFalse(any(b"send money" in m or b"Subject: forged" in m for m in msgs))

    def test_dmarc_quarantine_delivers_to_junk(self):
        self.mx_send("q@quar.example", ["alice@example.com"],
                     message("q@quar.example", "alice@example.com", "quarantined"))
        junk = inbox(self.a, "alice@example.com", "pw-alice-1", "Junk")
        got = [m for m in junk if b"Subject: quarantined" in m]
        self.assertEqual(len(got), 1)
        self.assertIn("dmarc=fail", self.auth_results(got[0]))
        self.assertFalse(any(b"Subject: quarantined" in m for m in inbox(self.a, "alice@example.com", "pw-alice-1")))

    def test_spf_pass_and_unsigned_none(self):
        self.mx_send("ok@spf-ok.example", ["alice@example.com"],
                     message("ok@spf-ok.example", "alice@example.com", "spf ok"))
        self.mx_send("x@none.example", ["alice@example.com"],
                     message("x@none.example", "alice@example.com", "nothing published"))
        msgs = inbox(self.a, "alice@example.com", "pw-alice-1")
        ok = self.auth_results(next(m for m in msgs if b"Subject: spf ok" in m))
        self.assertIn("spf=pass", ok)
        self.assertIn("dkim=none", ok)
        none = self.auth_results(next(m for m in msgs if b"Subject: nothing published" in m))
        self.assertIn("spf=none", none)
        self.assertIn("dkim=none", none)
        self.assertIn("dmarc=none", none)


# --------------------------------------------------------------------------------------
# submission and outbound


@unittest.skipUnless(SWAKS, "swaks is not installed (scripts/test installs it)")
class SubmissionTests(unittest.TestCase):
    """One server whose "internet" is a sink: temp@ is greylisted twice, gone@ does not
    exist, everyone else is accepted."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tries: dict[str, int] = {}

        def policy(rcpt: str):
            cls.tries[rcpt] = cls.tries.get(rcpt, 0) + 1
            if rcpt.startswith("temp") and cls.tries[rcpt] <= 2:
                return 451, "4.7.1 greylisted, try again later"
            if rcpt.startswith("gone"):
                return 550, "5.1.1 no such user here"
            return 250, "2.1.5 ok"

        cls.sink = SmtpSink(policy=policy)
        cls.addClassCleanup(cls.sink.close)
        cls.server, cls.dkim_init_output = relay_server(
            cls, cls.sink, "mail.e2e.test", "example.com", "retry_max_secs = 2\n")
        cls.server.start()
        for u in ("alice", "bob", "dan", "erin"):
            cls.server.add_user(f"{u}@example.com", f"pw-{u}-1")

    def sink_messages(self, token: bytes) -> list[dict]:
        return [m for m in self.sink.received() if token in m["data"]]

    def test_dkim_init_prints_the_record_and_is_idempotent(self):
        self.assertIn("tandem._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p=MIIB", self.dkim_init_output)
        r = self.server.cli("dkim", "init", "example.com")
        self.assertEqual(r.returncode, 0)
        self.assertIn("already has a key", r.stdout.decode())
        self.assertIn(dkim_txt(self.server, "example.com"), r.stdout.decode())
        key = self.server.data / "dkim" / "example.com" / "tandem.pem"
        self.assertEqual(key.stat().st_mode & 0o777, 0o600)

    def test_swaks_587_starttls_auth_delivers_locally_and_remotely(self):
        rc, out = swaks("--server", f"{HOST}:{self.server.ports['submission']}", "--tls",
                        "--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password", "pw-alice-1",
                        "--from", "alice@example.com", "--to", "bob@example.com,friend@remote.example",
                        "--header", "From: Alice <alice@example.com>", "--header", "Subject: swaks 587")
        self.assertEqual(rc, 0, out)
        self.assertIn("235 2.7.0", out)
        msgs = wait_inbox(self.server, "bob@example.com", "pw-bob-1", 1)
        self.assertTrue(any(b"Subject: swaks 587" in m for m in msgs))
        self.assertTrue(wait_until(lambda: self.sink_messages(b"Subject: swaks 587"), OUTBOUND_WAIT_S),
                        self.server.log_tail() + "\n" + self.server.cli("queue", "list").stdout.decode())
        got = self.sink_messages(b"Subject: swaks 587")
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0]["rcpts"], ["friend@remote.example"])
        self.assertEqual(got[0]["mail_from"], "alice@example.com")

    def test_swaks_465_implicit_tls(self):
        rc, out = swaks("--server", f"{HOST}:{self.server.ports['submissions']}", "--tlsc",
                        "--auth", "LOGIN", "--auth-user", "dan@example.com", "--auth-password", "pw-dan-1",
                        "--from", "dan@example.com", "--to", "erin@example.com",
                        "--header", "From: dan@example.com", "--header", "Subject: swaks 465")
        self.assertEqual(rc, 0, out)
        msgs = wait_inbox(self.server, "erin@example.com", "pw-erin-1", 1)
        self.assertTrue(any(b"Subject: swaks 465" in m for m in msgs))

    def test_unauthenticated_relay_is_refused(self):
        # MX: foreign domain.
        rc, out = swaks("--server", f"{HOST}:{self.server.ports['smtp']}", "--from", "alice@example.com",
                        "--to", "norelay@remote.example")
        self.assertNotEqual(rc, 0)
        self.assertIn("550 5.7.1 <norelay@remote.example>: relay not permitted", out)
        # Submission without AUTH.
        rc, out = swaks("--server", f"{HOST}:{self.server.ports['submission']}", "--tls",
                        "--from", "alice@example.com", "--to", "norelay@remote.example")
        self.assertNotEqual(rc, 0)
        self.assertIn("530 5.7.0 authentication required", out)
        # AUTH without TLS is not even offered, and refused when tried.
        s = RawSmtp(self.server.ports["submission"])
        s.reply()
        ehlo = s.cmd("EHLO laptop")
        self.assertNotIn("AUTH", ehlo)
        self.assertIn("STARTTLS", ehlo)
        cred = base64.b64encode(b"\0alice@example.com\0pw-alice-1").decode()
        self.assertTrue(s.cmd(f"AUTH PLAIN {cred}").startswith("530 5.7.0"))
        s.close()
        time.sleep(0.5)
        self.assertFalse(any("norelay@remote.example" in m["rcpts"] for m in self.sink.received()))

    def test_forged_senders_are_refused(self):
        common = ["--server", f"{HOST}:{self.server.ports['submission']}", "--tls", "--auth", "PLAIN",
                  "--auth-user", "alice@example.com", "--auth-password", "pw-alice-1", "--to", "bob@example.com"]
        rc, out = swaks(*common, "--from", "bob@example.com")
        self.assertNotEqual(rc, 0)
        self.assertIn("553 5.7.1 <bob@example.com>: sender address not owned by alice@example.com", out)
        rc, out = swaks(*common, "--from", "alice@example.com", "--header", "From: Bob <bob@example.com>",
                        "--header", "Subject: forged header")
        self.assertNotEqual(rc, 0)
        self.assertIn("553 5.7.1 From: <bob@example.com> is not an address of alice@example.com", out)
        with smtp_submission(self.server, "alice@example.com", "pw-alice-1") as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("ceo@example.com", ["bob@example.com"], b"From: ceo@example.com\r\n\r\nx\r\n")
            self.assertEqual(cm.exception.smtp_code, 553)
        self.assertFalse(any(b"Subject: forged header" in m for m in inbox(self.server, "bob@example.com", "pw-bob-1")))

    def test_outbound_mail_is_dkim_signed_with_a_verifiable_signature(self):
        with smtp_submissions(self.server, "alice@example.com", "pw-alice-1") as s:
            s.sendmail("alice@example.com", ["reader@remote.example"],
                       message("Alice <alice@example.com>", "reader@remote.example", "signed out",
                               body="Line one\r\n\r\n.leading dot\r\ntrailing spaces   \r\n\r\n\r\n"))
        self.assertTrue(wait_until(lambda: self.sink_messages(b"Subject: signed out"), OUTBOUND_WAIT_S),
                        self.server.log_tail() + "\n" + self.server.cli("queue", "list").stdout.decode())
        data = self.sink_messages(b"Subject: signed out")[0]["data"]
        self.assertIn(b"DKIM-Signature: v=1; a=rsa-sha256;", data)
        self.assertIn(b"d=example.com", data)
        txt = dkim_txt(self.server, "example.com")
        self.assertEqual(dkim_verify(data, txt), "pass")
        self.assertNotEqual(dkim_verify(data.replace(b"Line one", b"Line 1"), txt), "pass")

    def test_temporary_refusal_is_retried(self):
        with smtp_submission(self.server, "alice@example.com", "pw-alice-1") as s:
            s.sendmail("alice@example.com", ["temp1@remote.example"],
                       message("alice@example.com", "temp1@remote.example", "greylisted"))
        # Queued while greylisted: `queue list` shows it with the remote's reply.
        listed = wait_until(lambda: b"greylisted" in self.server.cli("queue", "list").stdout, 10, 0.1)
        if not self.sink_messages(b"Subject: greylisted"):
            self.assertTrue(listed, self.server.cli("queue", "list").stdout.decode())
        self.assertTrue(wait_until(lambda: self.sink_messages(b"Subject: greylisted"), 30), self.server.log_tail())
        self.assertEqual(len(self.sink_messages(b"Subject: greylisted")), 1)
        self.assertGreaterEqual(self.tries["temp1@remote.example"], 3)
        self.assertTrue(wait_until(lambda: b"greylisted" not in self.server.cli("queue", "list").stdout, 10))

    def test_permanent_refusal_sends_a_dsn_to_the_sender(self):
        with smtp_submission(self.server, "dan@example.com", "pw-dan-1") as s:
            s.sendmail("dan@example.com", ["gone@remote.example", "here@remote.example"],
                       message("dan@example.com", "gone@remote.example", "will bounce"))
        msgs = wait_inbox(self.server, "dan@example.com", "pw-dan-1", 1)
        dsn = [m for m in msgs if b"multipart/report" in m]
        self.assertEqual(len(dsn), 1, msgs)
        d = dsn[0]
        self.assertIn(b"Subject: Undelivered Mail Returned to Sender", d)
        self.assertIn(b"Final-Recipient: rfc822; gone@remote.example", d)
        self.assertIn(b"Action: failed", d)
        self.assertIn(b"Status: 5.1.1", d)
        self.assertIn(b"550 5.1.1 no such user here", d)
        self.assertIn(b"Subject: will bounce", d)  # the original headers come back
        self.assertNotIn(b"here@remote.example\r\nAction", d)
        self.assertEqual(len(self.sink_messages(b"Subject: will bounce")), 1)

    def test_queue_commands(self):
        r = self.server.cli("queue", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.server.cli("queue", "show", "0123456789abcdef0123")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"no queue entry", r.stderr)
        r = self.server.cli("queue", "drop", "0123456789abcdef0123")
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"nothing to do", r.stdout)
        r = self.server.cli("queue", "retry")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"--all", r.stderr)
        r = self.server.cli("queue", "retry", "--all")
        self.assertEqual(r.returncode, 0, r.stderr)


class MxRoutingTests(unittest.TestCase):
    """Two Tandems: A sends to B by MX lookup (static DNS), over STARTTLS, DKIM-signed; B's
    MX checks the signature. No relay: this is the path mail takes on the internet."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.b = Server(start=False, extra_toml='hostname = "mx.remote-b.example"\n')
        cls.addClassCleanup(cls.b.close)
        cls.a = Server(start=False, extra_toml=(
            'hostname = "a.e2e.test"\n[outbound]\n'
            f'port = {cls.b.ports["smtp"]}\nretry_initial_ms = 200\n'))
        cls.addClassCleanup(cls.a.close)
        r = cls.a.cli("dkim", "init", "example.com")
        assert r.returncode == 0, r.stderr.decode()
        cls.b.dns = {
            "example.com": ["TXT v=spf1 ip4:127.0.0.1 -all"],
            "_dmarc.example.com": ["TXT v=DMARC1; p=reject"],
            "tandem._domainkey.example.com": [f"TXT {dkim_txt(cls.a, 'example.com')}"],
        }
        cls.b.write_config()
        cls.b.start()
        cls.b.add_user("bob@remote-b.example", "pw-bob-1")
        cls.a.dns = {
            "remote-b.example": ["MX 20 mx2.remote-b.example", "MX 10 mx.remote-b.example"],
            "mx.remote-b.example": ["A 127.0.0.1"],
            "mx2.remote-b.example": ["A 127.0.0.1"],
            "null.example": ["MX 0 ."],
        }
        cls.a.write_config()
        cls.a.start()
        cls.a.add_user("alice@example.com", "pw-alice-1")

    def test_mail_reaches_the_mx_over_starttls_and_passes_dkim(self):
        with smtp_submission(self.a, "alice@example.com", "pw-alice-1") as s:
            s.sendmail("alice@example.com", ["bob@remote-b.example"],
                       message("Alice <alice@example.com>", "bob@remote-b.example", "over the wire"))
        msgs = wait_inbox(self.b, "bob@remote-b.example", "pw-bob-1", 1)
        got = [m for m in msgs if b"Subject: over the wire" in m]
        self.assertEqual(len(got), 1)
        head = got[0].split(b"\r\n\r\n")[0].decode()
        self.assertIn("from a.e2e.test ([127.0.0.1])\r\n\tby mx.remote-b.example (Tandem) with ESMTPS", head)
        self.assertIn("dkim=pass header.d=example.com", head)
        self.assertIn("spf=pass", head)
        self.assertIn("dmarc=pass", head)

    def test_domains_without_mail_hosts_bounce(self):
        with smtp_submission(self.a, "alice@example.com", "pw-alice-1") as s:
            s.sendmail("alice@example.com", ["x@null.example", "y@nowhere.example"],
                       message("alice@example.com", "x@null.example", "no such place"))
        msgs = wait_inbox(self.a, "alice@example.com", "pw-alice-1", 1)
        dsn = [m for m in msgs if b"multipart/report" in m and b"no such place" in m]
        self.assertTrue(dsn, msgs)
        text = b"".join(dsn)
        self.assertIn(b"Final-Recipient: rfc822; x@null.example", text)
        self.assertIn(b"null MX", text)
        self.assertIn(b"Final-Recipient: rfc822; y@nowhere.example", text)
        self.assertIn(b"nowhere.example has no address", text)
        self.assertNotIn(b"Remote-MTA", text, "no remote server was involved")
        self.assertIn(b"Status: 5.1.2", text)


class QueueCrashTests(unittest.TestCase):
    def test_queue_survives_sigkill_with_nothing_lost_or_sent_twice(self):
        port = free_port()  # nobody listens yet: the "internet" is down
        with Server(extra_toml=(
                'hostname = "mail.e2e.test"\n[outbound]\n'
                f'relay = "{HOST}:{port}"\nretry_initial_ms = 200\nretry_max_secs = 1\n')) as s:
            s.add_user("alice@example.com", "pw-alice-1")
            n = 5
            with smtp_submission(s, "alice@example.com", "pw-alice-1") as c:
                for i in range(n):
                    c.sendmail("alice@example.com", [f"r{i}@remote.example"],
                               message("alice@example.com", f"r{i}@remote.example", f"crash test {i}"))
            listed = s.cli("queue", "list").stdout.decode()
            self.assertIn(f"{n} queued messages", listed)
            s.kill()
            s.start()
            self.assertIn(f"{n} queued messages", s.cli("queue", "list").stdout.decode())
            # The internet comes back, slowly: kill the server while the sink holds the
            # first message's final reply, so that transaction never completes.
            with SmtpSink(port=port, stall=3.0) as sink:
                s.cli("queue", "retry", "--all")
                self.assertTrue(wait_until(lambda: sink.connections > 0, 10), s.log_tail())
                time.sleep(0.5)
                s.kill()
                time.sleep(3.0)
                sink.stall = 0.0
                s.start()
                s.cli("queue", "retry", "--all")
                ok = wait_until(lambda: len(sink.received()) >= n and "queue is empty" in s.cli("queue", "list").stdout.decode(), 30, 0.2)
                got = sink.received()
                self.assertTrue(ok, f"{len(got)} delivered; queue: {s.cli('queue', 'list').stdout.decode()}\n{s.log_tail()}")
                subjects = sorted(re.search(rb"Subject: (crash test \d)", m["data"]).group(1) for m in got)
                self.assertEqual(subjects, [f"crash test {i}".encode() for i in range(n)])
            self.assertEqual(s.alerts(), [])


# --------------------------------------------------------------------------------------
# bad input


class BadInputTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server(extra_toml='hostname = "mx.e2e.test"\n[smtp]\nidle_timeout_secs = 2\nmessages_per_ip_per_minute = 0\n')
        cls.addClassCleanup(cls.server.close)
        cls.server.add_user("alice@example.com", "pw-alice-1")

    def count(self) -> int:
        return len(inbox(self.server, "alice@example.com", "pw-alice-1"))

    def session(self) -> RawSmtp:
        s = RawSmtp(self.server.ports["smtp"])
        self.addCleanup(s.close)
        self.assertTrue(s.reply().startswith("220 mx.e2e.test ESMTP"))
        self.assertTrue(s.cmd("EHLO bad.example").startswith("250-mx.e2e.test"))
        return s

    def test_bare_lf_is_accepted_in_commands_and_never_ends_data(self):
        before = self.count()
        s = self.session()
        s.send(b"MAIL FROM:<x@none.example>\nRCPT TO:<alice@example.com>\nDATA\n")
        self.assertTrue(s.reply().startswith("250"))
        self.assertTrue(s.reply().startswith("250"))
        self.assertTrue(s.reply().startswith("354"))
        s.send(b"Subject: bare lf\n\nline one\n.\nline two\r\n.\r\n")
        self.assertTrue(s.reply().startswith("250"), "only CRLF.CRLF ends the data")
        s.cmd("QUIT")
        msgs = inbox(self.server, "alice@example.com", "pw-alice-1")
        self.assertEqual(len(msgs), before + 1)
        self.assertTrue(msgs[-1].endswith(b"Subject: bare lf\r\n\r\nline one\r\n\r\nline two\r\n"), msgs[-1][-80:])

    def test_overlong_lines_and_nul_bytes_get_clear_replies(self):
        s = self.session()
        self.assertEqual(s.cmd("NOOP " + "x" * 5000), "500 5.5.2 line too long")
        s.send(b"MAIL FROM:<x\0y@none.example>\r\n")
        self.assertRegex(s.reply(), r"^50[01] 5\.5\.[24] ")
        s.send(b"HELO \0\r\n")
        self.assertRegex(s.reply(), r"^501 5\.5\.4 ")
        self.assertTrue(s.cmd("NOOP").startswith("250"))
        # NUL inside a message is stored as sent.
        before = self.count()
        s.cmd("MAIL FROM:<x@none.example>")
        s.cmd("RCPT TO:<alice@example.com>")
        s.cmd("DATA")
        s.send(b"Subject: nul\r\n\r\na\0b\r\n.\r\n")
        self.assertTrue(s.reply().startswith("250"))
        msgs = inbox(self.server, "alice@example.com", "pw-alice-1")
        self.assertEqual(len(msgs), before + 1)
        self.assertTrue(msgs[-1].endswith(b"a\0b\r\n"))

    def test_pipelining_abuse(self):
        s = self.session()
        s.send(b"NOOP\r\n" * 300)
        for _ in range(300):
            self.assertTrue(s.reply().startswith("250 2.0.0"))
        # STARTTLS with commands smuggled behind it in the same packet.
        s.send(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
        self.assertTrue(s.reply().startswith("503 5.5.1 STARTTLS must be the last"))
        self.assertTrue(s.reply().startswith("250"), "the smuggled command runs in plaintext, as sent")
        s.cmd("RSET")
        # A whole transaction blindly pipelined with its only recipient refused: the content
        # lines become bad commands and the session is closed before they add up.
        before = self.count()
        body = b"".join(b"junk line %d\r\n" % i for i in range(40))
        s.send(b"MAIL FROM:<x@none.example>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n" + body + b".\r\n")
        self.assertTrue(s.reply().startswith("250"))
        self.assertTrue(s.reply().startswith("550 5.1.1"))
        self.assertTrue(s.reply().startswith("503 5.5.1"))
        replies = []
        while True:
            r = s.reply()
            if not r:
                break
            replies.append(r)
            if r.startswith("421"):
                break
        self.assertTrue(replies and replies[-1].startswith("421 4.7.0"), replies[-3:])
        self.assertTrue(s.closed())
        self.assertEqual(self.count(), before)

    def test_slow_senders_are_cut_off(self):
        s = self.session()
        s.send(b"NOOP")
        self.assertTrue(s.reply().startswith("421 4.4.2"))
        self.assertTrue(s.closed())
        before = self.count()
        s = self.session()
        s.cmd("MAIL FROM:<x@none.example>")
        s.cmd("RCPT TO:<alice@example.com>")
        s.cmd("DATA")
        s.send(b"Subject: slow\r\n\r\nhalf a message")
        self.assertTrue(s.reply().startswith("421 4.4.2"))
        self.assertEqual(self.count(), before)

    def test_dropped_connections_store_nothing(self):
        before = self.count()
        blobs = len(self.server.blob_files())
        for how in ("close", "abort"):
            s = self.session()
            s.cmd("MAIL FROM:<x@none.example>")
            s.cmd("RCPT TO:<alice@example.com>")
            s.cmd("DATA")
            s.send(b"Subject: dropped\r\n\r\n" + b"x" * 100_000)
            getattr(s, how)()
            s = self.session()
            s.send(b"BDAT 1000 LAST\r\n" + b"y" * 10)
            getattr(s, how)()
        time.sleep(0.5)
        self.assertEqual(self.count(), before)
        self.assertEqual(len(self.server.blob_files()), blobs)
        self.assertTrue(self.server.running())


if __name__ == "__main__":
    unittest.main()
