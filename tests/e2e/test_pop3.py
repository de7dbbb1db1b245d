"""POP3 against the real binary: Python's poplib over pop3s and over the plain port with
STLS, and a real retrieval client, fetchmail, over STLS."""

from __future__ import annotations

import base64
import os
import poplib
import re
import shutil
import socket
import subprocess
import unittest

from harness import (
    DOMAIN,
    HOST,
    IO_TIMEOUT_S,
    MessageFactory,
    Server,
    ServerTestCase,
    check,
    fetch_bodies,
    fetch_flags,
    select,
    unverified_context,
    wait_until,
)

FETCHMAIL = shutil.which("fetchmail")


def pop3s(server: Server, user: str | None = None, password: str | None = None) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL(HOST, server.ports["pop3s"], context=unverified_context(), timeout=IO_TIMEOUT_S)
    if user is not None:
        p.user(user)
        p.pass_(password)
    return p


def retr(p: poplib.POP3, n: int) -> bytes:
    """RETR n as the message bytes (poplib splits lines and un-stuffs dots)."""
    _, lines, _ = p.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


def uidl_map(p: poplib.POP3) -> dict[int, str]:
    _, lines, _ = p.uidl()
    return {int(n): u.decode() for n, u in (line.split() for line in lines)}


class Pop3Test(ServerTestCase):
    msgs = MessageFactory(seed=1939)

    def pop(self, user: str, pw: str) -> poplib.POP3_SSL:
        p = pop3s(self.server, user, pw)
        self.addCleanup(_close_quietly, p)
        return p

    def deliver(self, user: str, n: int, first: int = 0) -> list[bytes]:
        sent = [self.msgs.message(first + i, to=user) for i in range(n)]
        self.server.deliver_many(user, sent)
        return sent

    def test_pop3s_retrieves_exact_bytes_and_deletes_at_quit(self):
        user, pw = self.new_user()
        sent = self.deliver(user, 6)
        p = self.pop(user, pw)
        count, octets = p.stat()
        self.assertEqual((count, octets), (6, sum(len(m) for m in sent)))
        _, listing, _ = p.list()
        self.assertEqual([int(line.split()[1]) for line in listing], [len(m) for m in sent],
                         "LIST sizes are the exact octets RETR sends")
        for i, m in enumerate(sent):
            self.assertEqual(retr(p, i + 1), m, f"RETR {i + 1} must return the delivered bytes")
        _, top, _ = p.top(1, 0)
        self.assertIn(b"Message-ID: " + self.msgs.message_id(0).encode(), top)
        self.assertEqual(top[-1], b"", "TOP n 0 ends with the empty line after the header")
        p.dele(2)
        p.dele(4)
        with self.assertRaises(poplib.error_proto):
            p.retr(2)
        self.assertEqual(p.stat()[0], 4)
        self.assertTrue(p.quit().startswith(b"+OK"))

        m = self.login(user, pw)
        self.assertEqual(select(m)["EXISTS"], 4, "QUIT expunged exactly the two deleted messages")
        bodies = fetch_bodies(m)
        self.assertEqual(sorted(bodies.values()), sorted(sent[i] for i in (0, 2, 4, 5)))
        flags = fetch_flags(m)
        self.assertTrue(all("\\Seen" in f for f in flags.values()), f"RETR marks \\Seen: {flags}")

    def test_plain_port_requires_stls_before_passwords(self):
        user, pw = self.new_user()
        self.deliver(user, 1)
        p = poplib.POP3(HOST, self.server.ports["pop3"], timeout=IO_TIMEOUT_S)
        self.addCleanup(_close_quietly, p)
        caps = p.capa()
        self.assertIn("STLS", caps)
        self.assertNotIn("USER", caps, "no USER offered where it would be refused")
        with self.assertRaises(poplib.error_proto) as e:
            p.user(user)
        self.assertEqual(
            e.exception.args[0].decode(),
            f"-ERR [AUTH] Authentication requires TLS; use STLS or port {self.server.ports['pop3s']}"
            f"; see http://localhost:{self.server.ports['http']}/help/tls",
        )
        p.stls(context=unverified_context())
        caps = p.capa()
        for cap in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION"):
            self.assertIn(cap, caps)
        self.assertEqual(caps["SASL"], ["PLAIN"])
        self.assertNotIn("STLS", caps)
        p.user(user)
        p.pass_(pw)
        self.assertEqual(p.stat()[0], 1)

    def test_auth_plain_and_wrong_password(self):
        user, pw = self.new_user()
        p = pop3s(self.server)
        self.addCleanup(_close_quietly, p)
        with self.assertRaises(poplib.error_proto) as e:
            p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0wrong".encode()).decode())
        self.assertEqual(e.exception.args[0], b"-ERR [AUTH] Invalid credentials")
        resp = p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode()).decode())
        self.assertTrue(resp.startswith(b"+OK"), resp)
        self.assertEqual(p.stat(), (0, 0))

    def test_uidl_is_uid_and_uidvalidity_and_stable(self):
        user, pw = self.new_user()
        self.deliver(user, 3)
        m = self.login(user, pw)
        uidvalidity = select(m, readonly=True)["UIDVALIDITY"]
        uids = sorted(fetch_bodies(m))
        p = self.pop(user, pw)
        first = uidl_map(p)
        self.assertEqual(first, {i + 1: f"{u:08X}{uidvalidity:08X}" for i, u in enumerate(uids)})
        p.dele(1)
        p.quit()
        self.deliver(user, 1, first=10)
        p = self.pop(user, pw)
        second = uidl_map(p)
        self.assertEqual(set(second.values()) & set(first.values()), {first[2], first[3]},
                         "surviving messages keep their UIDL; the deleted one is gone")
        self.assertEqual(len(second), 3)

    def test_imap_changes_do_not_shift_pop3_numbering(self):
        user, pw = self.new_user()
        sent = self.deliver(user, 3, first=20)
        p = self.pop(user, pw)
        m = self.login(user, pw)
        select(m)
        uids = sorted(fetch_bodies(m))
        check(m.uid("STORE", str(uids[0]), "+FLAGS.SILENT", "(\\Deleted)"))
        check(m.expunge())
        self.deliver(user, 1, first=30)
        self.assertEqual(p.stat()[0], 3, "the POP3 view is the snapshot at login")
        with self.assertRaises(poplib.error_proto) as e:
            p.retr(1)
        self.assertIn(b"removed by another session", e.exception.args[0])
        self.assertEqual(retr(p, 3), sent[2], "message 3 is still message 3")
        p.dele(3)
        p.quit()
        self.assertEqual(select(m)["EXISTS"], 2)

    def test_disconnect_without_quit_deletes_nothing(self):
        user, pw = self.new_user()
        self.deliver(user, 2, first=40)
        p = self.pop(user, pw)
        p.dele(1)
        p.dele(2)
        p.sock.shutdown(socket.SHUT_RDWR)
        p.sock.close()
        p = self.pop(user, pw)
        self.assertEqual(p.stat()[0], 2, "deletions are forgotten without QUIT (RFC 1939 6)")

    def test_damaged_message_is_refused_and_alerted(self):
        user, pw = self.new_user()
        sent = self.deliver(user, 3, first=50)
        blob = self.server.blob_of(sent[1])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        p = self.pop(user, pw)
        with self.assertRaises(poplib.error_proto) as e:
            p.retr(2)
        self.assertEqual(
            e.exception.args[0],
            b"-ERR [SYS/PERM] message 2 is damaged and cannot be read; the operators have been alerted",
        )
        self.assertEqual(retr(p, 3), sent[2], "the session carries on")
        self.assertEqual(retr(p, 1), sent[0])
        self.assertTrue(wait_until(lambda: [a for a in self.server.alerts() if a.get("kind") == "corrupt_blob"], 5),
                        f"an alert is raised: {self.server.events()}")


def _close_quietly(p: poplib.POP3) -> None:
    try:
        p.close()
    except Exception:
        pass


@unittest.skipIf(FETCHMAIL is None and not os.environ.get("CI"),
                 "fetchmail is not installed (Debian package fetchmail; scripts/test installs it)")
class FetchmailTest(unittest.TestCase):
    """fetchmail retrieves over the plain port with STLS, verifying the server's certificate,
    and delivers each message to an MDA that writes it to a file."""

    msgs = MessageFactory(seed=2595)

    def setUp(self):
        self.assertIsNotNone(FETCHMAIL, "fetchmail must be installed (scripts/test installs it)")
        self.server = Server()
        self.addCleanup(self.server.close)
        self.user = f"fetch@{DOMAIN}"
        self.pw = "fetch pw 1"
        self.server.add_user(self.user, self.pw)
        self.home = self.server.tmp / "fetchmail"
        self.out = self.home / "out"
        self.out.mkdir(parents=True)

    def run_fetchmail(self, keep: str) -> subprocess.CompletedProcess:
        rc = self.home / "fetchmailrc"
        rc.write_text(f"""\
set no syslog
set no bouncemail
poll localhost proto POP3 port {self.server.ports['pop3']} uidl
  auth password
  user "{self.user}" password "{self.pw}"
  sslproto "tls1.2+" sslcertck sslcertfile "{self.server.cert_path}"
  {keep} norewrite
  mda "cat > {self.out}/msg.$$"
""")
        rc.chmod(0o600)
        env = dict(os.environ, FETCHMAILHOME=str(self.home), HOME=str(self.home))
        r = subprocess.run([FETCHMAIL, "-v", "-f", str(rc), "--nodetach", "--timeout", "30"],
                           capture_output=True, env=env, timeout=120)
        log = (r.stdout + r.stderr).decode(errors="replace")
        self.assertIn(r.returncode, (0, 1), f"fetchmail failed ({r.returncode}):\n{log}")
        self.assertIn("POP3> STLS", log, f"fetchmail should have used STLS:\n{log}")
        self.assertIn("upgrade to TLS succeeded", log, f"and verified the certificate:\n{log}")
        self.assertNotIn(self.pw, log, "the password is never logged")
        return r

    def fetched(self) -> list[bytes]:
        files = sorted(self.out.iterdir())
        out = [f.read_bytes() for f in files]
        for f in files:
            f.unlink()
        return out

    def assert_same_messages(self, got: list[bytes], sent: list[bytes]):
        # fetchmail adds its own Received: header on top and hands the MDA LF line ends.
        want = sorted(m.replace(b"\r\n", b"\n") for m in sent)
        bodies = sorted(re.sub(rb"\A(Received:.*\n(?:[ \t].*\n)*)", b"", g, count=1) for g in got)
        self.assertEqual(len(bodies), len(want))
        for b, w in zip(bodies, want):
            self.assertEqual(b, w)

    def test_fetchmail_keeps_then_fetches_only_new_then_deletes(self):
        sent = [self.msgs.message(i, to=self.user) for i in range(12)]
        self.server.deliver_many(self.user, sent)
        self.assertEqual(self.run_fetchmail("keep").returncode, 0)
        self.assert_same_messages(self.fetched(), sent)

        # UIDLs are stable: a second run with `keep` fetches only the new message.
        new = [self.msgs.message(100, to=self.user)]
        self.server.deliver_many(self.user, new)
        self.run_fetchmail("keep")
        self.assert_same_messages(self.fetched(), new)

        # Without `keep`, fetchmail deletes what it fetched; QUIT expunges it.
        self.run_fetchmail("fetchall nokeep")
        self.assert_same_messages(self.fetched(), sent + new)
        m = self.server.imaps(self.user, self.pw)
        try:
            self.assertEqual(select(m)["EXISTS"], 0, "every fetched message was removed at QUIT")
        finally:
            m.logout()


if __name__ == "__main__":
    unittest.main()
