"""Hostile and broken clients: every limit holds, the server answers BAD (or hangs up), never
falls over, never stores half a message, and honest clients carry on unharmed."""

from __future__ import annotations

import time
import unittest

from harness import (
    DOMAIN,
    MessageFactory,
    RawImap,
    ServerTestCase,
    fetch_bodies,
    list_mailboxes,
    dot_stuff,
    select,
    status,
)

TEN_GB = 10 * 1024**3
RSS_GROWTH_MAX_KIB = 256 * 1024  # far below 10 GB, far above any honest buffer


def answer(r: RawImap, tag: str, timeout: float = 10) -> tuple[str, list[bytes]]:
    """Reads until the server answers: returns ('OK'|'NO'|'BAD'|'BYE'|'+'|'closed'|'timeout',
    lines). An untagged BAD counts as the answer (the tag may be unparseable)."""
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", lines
        try:
            line = r.readline(remaining)
        except TimeoutError:
            return "timeout", lines
        if line == b"" and r.closed:
            return "closed", lines
        lines.append(line)
        if line.startswith(b"+"):
            return "+", lines
        parts = line.split(b" ")
        if len(parts) >= 2 and parts[1] in (b"BAD", b"BYE"):
            return parts[1].decode(), lines
        if parts[0] == tag.encode() and len(parts) >= 2:
            return parts[1].decode(), lines


class BadInputTest(ServerTestCase):
    msgs = MessageFactory(seed=505)

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.user, cls.pw = f"victim@{DOMAIN}", "victim-pw"
        cls.server.add_user(cls.user, cls.pw)
        cls.earlier = [cls.msgs.message(i, to=cls.user) for i in range(3)]
        cls.server.deliver_many(cls.user, cls.earlier)

    def session(self, tls: bool = True, login: bool = True) -> RawImap:
        r = self.server.raw_imap(tls=tls)
        self.addCleanup(r.close)
        if login:
            r.login(self.user, self.pw)
        return r

    def assert_usable(self, r: RawImap, what: str) -> None:
        _, tagged, _ = r.command("NOOP", timeout=5)
        self.assertIn(b" OK", tagged, f"the connection should still work after {what}: {tagged!r}")

    def message_count(self) -> int:
        m = self.server.imaps(self.user, self.pw)
        try:
            return status(m, "INBOX", "(MESSAGES)")["MESSAGES"]
        finally:
            m.logout()

    def assert_server_serves(self) -> None:
        self.assertTrue(self.server.running(), "the server must stay up")
        with self.server.raw_imap() as r:
            r.login(self.user, self.pw)

    # ---- oversized input

    def test_100kb_command_line(self):
        r = self.session()
        try:
            r.send(b"L1 NOOP " + b"x" * 100_000 + b"\r\n")
        except OSError:
            pass  # the server may hang up before reading it all
        outcome, lines = answer(r, "L1")
        self.assertIn(outcome, ("BAD", "BYE", "closed"), f"a 100 KB line: {lines[:3]!r}")
        if outcome == "BAD" and not r.closed:
            # After BAD the rest of the line may still be skipped; NOOP must then work.
            _, tagged, _ = r.command("NOOP", timeout=10)
            if tagged:
                self.assertIn(b" OK", tagged, "NOOP after the long line")
        self.assert_server_serves()

    def test_10gb_literal_is_refused_without_allocating(self):
        rss0 = self.server.rss_kib()
        r = self.session()
        r.send(f"G1 APPEND INBOX {{{TEN_GB}}}\r\n".encode())
        outcome, lines = answer(r, "G1")
        self.assertNotEqual(outcome, "+", "the server invited a 10 GB literal")
        self.assertIn(outcome, ("NO", "BAD", "BYE", "closed"), f"10 GB literal: {lines!r}")
        if not r.closed and outcome in ("NO", "BAD"):
            self.assert_usable(r, "a refused 10 GB literal")
        # The same in a place where no literal that size could ever make sense.
        r2 = self.session(login=False)
        r2.send(f"G2 LOGIN {{{TEN_GB}}}\r\n".encode())
        outcome, lines = answer(r2, "G2")
        self.assertNotEqual(outcome, "+", "the server invited a 10 GB LOGIN literal")
        rss1 = self.server.rss_kib()
        self.assertLess(rss1 - rss0, RSS_GROWTH_MAX_KIB, f"server RSS grew from {rss0} to {rss1} KiB")
        self.assert_server_serves()

    def test_10gb_non_synchronizing_literal_is_refused(self):
        r2 = self.session()
        untagged, _, _ = r2.command("CAPABILITY")
        capline = b" ".join(untagged).upper()
        if b"LITERAL+" not in capline and b"LITERAL-" not in capline:
            self.skipTest("the server does not advertise LITERAL+ or LITERAL-")
        rss0 = self.server.rss_kib()
        try:
            # The literal's bytes look like a command: they must never be executed.
            r2.send(f"G3 APPEND INBOX {{{TEN_GB}+}}\r\n".encode() + b"X1 CREATE Injected\r\n" + b"A" * 65536)
        except OSError:
            pass
        outcome, lines = answer(r2, "G3")
        self.assertIn(outcome, ("NO", "BAD", "BYE", "closed"),
                      f"a 10 GB non-synchronizing literal must be refused at once, got {outcome} {lines!r}")
        rss1 = self.server.rss_kib()
        self.assertLess(rss1 - rss0, RSS_GROWTH_MAX_KIB, f"server RSS grew from {rss0} to {rss1} KiB")
        m = self.login(self.user, self.pw)
        self.assertNotIn("Injected", list_mailboxes(m), "bytes of a refused literal were run as a command")
        self.assert_server_serves()

    # ---- malformed commands

    def check_bad(self, payload: bytes, what: str, tls: bool = True, login: bool = True) -> None:
        r = self.session(tls=tls, login=login)
        r.send(payload)
        tag = payload.split(b" ", 1)[0].decode("latin-1")
        outcome, lines = answer(r, tag)
        self.assertEqual(outcome, "BAD", f"{what} {payload[:60]!r}: {lines!r}")
        self.assert_usable(r, what)

    def test_garbage_bytes_get_bad(self):
        self.check_bad(b"\x16\x03\x01\x02\x00garbage \xff\xfe\x80\r\n", "binary garbage")
        self.check_bad(b"\xff\xfe\xfd\xfc\r\n", "binary garbage before login", tls=False, login=False)
        self.check_bad(b"(((((((((((\r\n", "unbalanced parentheses")

    def test_invalid_utf8_gets_bad(self):
        self.check_bad(b'U1 SELECT "\xc3\x28\xa0\xa1"\r\n', "invalid UTF-8 in a quoted string")
        self.check_bad(b"U2 NO\xc3OP\r\n", "invalid UTF-8 in the command name")

    def test_nul_in_command_gets_bad(self):
        self.check_bad(b"N1 NOOP\x00\r\n", "a NUL after the command")
        self.check_bad(b'N2 SELECT "IN\x00BOX"\r\n', "a NUL in a quoted string")
        self.check_bad(b"N3 LOGIN a\x00b c\r\n", "a NUL in LOGIN before authentication", tls=False, login=False)

    def test_unknown_command_gets_tagged_bad(self):
        r = self.session()
        _, tagged, _ = r.command("FROBNICATE now", tag="K1")
        self.assertTrue(tagged.startswith(b"K1 BAD"), f"unknown command: {tagged!r}")
        self.assert_usable(r, "an unknown command")

    def test_30_bad_commands_in_a_row_get_bye(self):
        r = self.session()
        seen: list[bytes] = []
        ended_after = None
        for i in range(1, 31):
            try:
                r.send(f"B{i} FROBNICATE\r\n".encode())
            except OSError:
                ended_after = i
                break
            outcome, lines = answer(r, f"B{i}")
            seen += lines
            if outcome in ("BYE", "closed") or any(ln.split(b" ")[1:2] == [b"BYE"] for ln in lines):
                ended_after = i
                break
            self.assertEqual(outcome, "BAD", f"bad command {i}: {lines!r}")
        if ended_after is None:
            # The 30th BAD may be followed by the BYE.
            outcome, lines = answer(r, "B-none", timeout=3)
            seen += lines
            if outcome in ("BYE", "closed"):
                ended_after = 30
        self.assertIsNotNone(ended_after, "30 bad commands in a row should end in BYE")
        self.assertGreater(ended_after, 1, "one bad command must not end the session")
        self.assertTrue(any(ln.split(b" ")[1:2] == [b"BYE"] for ln in seen),
                        f"the server should say BYE before hanging up; last lines {seen[-3:]!r}")
        # After the BYE the server hangs up.
        deadline = time.monotonic() + 5
        while not r.closed and time.monotonic() < deadline:
            try:
                r.readline(max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
        self.assertTrue(r.closed, "the server should close the connection after BYE")
        self.assert_server_serves()

    # ---- abrupt disconnects

    def test_disconnect_mid_literal_stores_nothing(self):
        before = self.message_count()
        blobs_before = set(self.server.blob_files())
        msg = self.msgs.message(100, to=self.user)
        r = self.session()
        r.send(f"A1 APPEND INBOX {{{len(msg)}}}\r\n".encode())
        outcome, lines = answer(r, "A1")
        self.assertEqual(outcome, "+", f"APPEND continuation: {lines!r}")
        r.send(msg[: len(msg) // 2])
        time.sleep(0.1)
        r.abort()
        time.sleep(0.5)
        self.assertEqual(self.message_count(), before, "half an APPEND must not be stored")
        self.assertEqual(set(self.server.blob_files()), blobs_before, "half an APPEND left a blob")
        self.assert_server_serves()

    def test_disconnect_mid_lmtp_data_stores_nothing(self):
        before = self.message_count()
        blobs_before = set(self.server.blob_files())
        msg = self.msgs.message(101, to=self.user)
        l = self.server.lmtp()
        try:
            l.ehlo_or_helo_if_needed()
            self.assertEqual(l.mail("x@example.net")[0], 250)
            self.assertEqual(l.rcpt(self.user)[0], 250)
            self.assertEqual(l.docmd("data")[0], 354)
            # Dot-stuffed, so the half cannot contain the CRLF.CRLF that ends DATA.
            payload = dot_stuff(msg)
            half = payload[: len(payload) // 2]
            self.assertNotIn(b"\r\n.\r\n", half)
            l.send(half)
            time.sleep(0.1)
        finally:
            l.sock.close()
        time.sleep(0.5)
        self.assertEqual(self.message_count(), before, "half an LMTP DATA must not be stored")
        self.assertEqual(set(self.server.blob_files()), blobs_before, "half an LMTP DATA left a blob")
        self.assert_server_serves()

    def test_unknown_lmtp_user_gets_550(self):
        r = self.server.deliver(f"nobody@{DOMAIN}", b"Subject: x\r\n\r\nx\r\n")
        self.assertEqual(r.rcpt[f"nobody@{DOMAIN}"][0], 550, r.rcpt)

    # ---- and afterwards

    def test_zz_after_all_normal_session_and_earlier_mail_intact(self):
        """Runs last (unittest sorts by name): the abuse above left no damage."""
        m = self.login(self.user, self.pw)
        self.assertEqual(select(m)["EXISTS"], len(self.earlier))
        self.assertEqual(list(fetch_bodies(m).values()), self.earlier)
        self.assertEqual(self.server.alerts(), [], "bad input must not raise alerts about stored data")


if __name__ == "__main__":
    unittest.main()
