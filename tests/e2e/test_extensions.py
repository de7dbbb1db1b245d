"""IMAP extensions and per-connection limits against the real binary (issue 3).

The protocol details of each extension are pinned by the Rust tests in
crates/imap/tests/extensions.rs; these check the same features the way a client meets
them: over TLS from the real `tandem serve`, with the limits read from tandem.toml.
"""

from __future__ import annotations

import time
import unittest
import zlib

from harness import (
    MessageFactory,
    RawImap,
    ServerTestCase,
    check,
    qstr,
    select,
)


def raw_login(server, user: str, password: str) -> RawImap:
    r = server.raw_imap()
    r.login(user, password)
    return r


class ExtensionsTest(ServerTestCase):
    msgs = MessageFactory(seed=4242)

    def test_capabilities_list_the_extensions(self):
        user, pw = self.new_user()
        m = self.login(user, pw)
        caps = set(check(m.capability())[0].decode().split())
        for cap in ("ESEARCH", "SEARCHRES", "WITHIN", "LIST-EXTENDED", "LIST-STATUS",
                    "STATUS=SIZE", "SORT", "SORT=DISPLAY", "THREAD=REFERENCES",
                    "THREAD=ORDEREDSUBJECT", "QUOTA", "BINARY", "MULTIAPPEND",
                    "UNAUTHENTICATE", "UTF8=ACCEPT", "OBJECTID", "PREVIEW",
                    "COMPRESS=DEFLATE", "CREATE-SPECIAL-USE", "NOTIFY"):
            self.assertIn(cap, caps)

    def test_sort_and_thread_through_imaplib(self):
        user, pw = self.new_user()
        subjects = ["beta", "Re: alpha", "alpha", "Re: beta"]
        for i, s in enumerate(subjects):
            self.server.deliver(user, self.msgs.message(i, kind="plain", subject=s))
        m = self.login(user, pw)
        select(m)
        typ, data = m.sort("(SUBJECT)", "UTF-8", "ALL")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0].split(), [b"2", b"3", b"1", b"4"])
        typ, data = m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0], b"(1 4)(2 3)")

    def test_esearch_searchres_and_preview(self):
        user, pw = self.new_user()
        for i in range(4):
            self.server.deliver(user, self.msgs.message(i, kind="plain"))
        r = raw_login(self.server, user, pw)
        r.command("SELECT INBOX")
        untagged, tagged, _ = r.command("SEARCH RETURN (COUNT SAVE) ALL", tag="s1")
        self.assertIn(b"OK", tagged)
        self.assertEqual(untagged, [b'* ESEARCH (TAG "s1") COUNT 4'])
        untagged, tagged, _ = r.command("FETCH $ (UID PREVIEW)")
        self.assertIn(b"OK", tagged)
        self.assertEqual(len(untagged), 4)
        self.assertTrue(all(b"PREVIEW " in u for u in untagged), untagged)
        r.close()

    def test_compress_deflate_end_to_end(self):
        user, pw = self.new_user()
        self.server.deliver(user, self.msgs.message(0, kind="multipart"))
        r = raw_login(self.server, user, pw)
        _, tagged, _ = r.command("COMPRESS DEFLATE")
        self.assertEqual(tagged, b"r2 OK DEFLATE active")
        comp = zlib.compressobj(wbits=-15)
        decomp = zlib.decompressobj(wbits=-15)
        r.send(comp.compress(b"c1 SELECT INBOX\r\nc2 FETCH 1 BODY.PEEK[]\r\n") + comp.flush(zlib.Z_SYNC_FLUSH))
        plain = b""
        deadline = time.monotonic() + 10
        while b"c2 OK" not in plain and time.monotonic() < deadline:
            chunk = r.sock.recv(65536)
            if not chunk:
                break
            plain += decomp.decompress(chunk)
        self.assertIn(b"c1 OK [READ-WRITE]", plain)
        self.assertIn(b"c2 OK", plain)
        self.assertIn(self.msgs.token(0).encode(), plain)
        r.close()

    def test_notify_pushes_a_delivery_without_a_command(self):
        user, pw = self.new_user()
        r = raw_login(self.server, user, pw)
        r.command("CREATE Work")
        r.command("SELECT Work")
        _, tagged, _ = r.command("NOTIFY SET (selected (MessageNew (UID) MessageExpunge)) "
                                 "(inboxes (MessageNew MessageExpunge))")
        self.assertIn(b"OK", tagged)
        self.server.deliver(user, self.msgs.message(1, kind="plain"))
        line = r.readline(timeout=5)
        self.assertTrue(line.startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2"), line)
        r.close()

    def test_unauthenticate_then_login_again(self):
        user, pw = self.new_user()
        r = raw_login(self.server, user, pw)
        _, tagged, _ = r.command("UNAUTHENTICATE")
        self.assertIn(b"OK", tagged)
        _, tagged, _ = r.command("SELECT INBOX")
        self.assertIn(b"BAD", tagged)
        r.login(user, pw)
        r.close()


class LimitsTest(ServerTestCase):
    """The [limits] keys of tandem.toml reach the IMAP service."""

    server_kwargs = {
        "extra_toml": "[limits]\n"
                      "imap_commands_per_second = 4\n"
                      "imap_connections_per_ip_max = 6\n"
                      "imap_connections_per_user_max = 2\n"
                      "imap_unauth_timeout_secs = 2\n",
    }

    def test_unauthenticated_connection_is_logged_out(self):
        r = self.server.raw_imap()
        t0 = time.monotonic()
        line = r.readline(timeout=10)
        self.assertTrue(line.startswith(b"* BYE Autologout"), line)
        self.assertLess(time.monotonic() - t0, 8)
        r.close()

    def test_commands_per_second(self):
        user, pw = self.new_user()
        r = raw_login(self.server, user, pw)
        answers = [r.command("NOOP")[1] for _ in range(25)]
        limited = [a for a in answers if b"NO [LIMIT]" in a]
        self.assertTrue(limited, answers)
        self.assertIn(b"per second", limited[0])
        r.close()

    def test_connections_per_user(self):
        user, pw = self.new_user()
        a = raw_login(self.server, user, pw)
        b = raw_login(self.server, user, pw)
        c = self.server.raw_imap()
        _, tagged, _ = c.command(f"LOGIN {qstr(user)} {qstr(pw)}")
        self.assertIn(b"NO [LIMIT]", tagged)
        for x in (a, b, c):
            x.close()

    def test_connections_per_ip(self):
        conns = []
        refused = None
        for _ in range(8):
            r = RawImap("127.0.0.1", self.server.ports["imap"], tls=False)
            conns.append(r)
            if r.greeting.startswith(b"* BYE"):
                refused = r.greeting
                break
        self.assertIsNotNone(refused)
        self.assertIn(b"Too many connections from your address (limit 6)", refused)
        for r in conns:
            r.close()


if __name__ == "__main__":
    unittest.main()
