"""Detect, complain loudly, never propagate (DESIGN invariants 2 and 3): a damaged or missing
message blob is refused with NO, raises an alert, and the rest of the mailbox keeps working."""

from __future__ import annotations

import re
import unittest

from harness import DOMAIN, MessageFactory, Server, check, fetch, fetch_bodies, select

DAMAGE_WORDS = re.compile(rb"damag|corrupt|missing", re.I)


class CorruptionTest(unittest.TestCase):
    msgs = MessageFactory(seed=404)

    def setup_mailbox(self, user: str, pw: str, first: int) -> tuple[Server, list[bytes], list[int]]:
        s = Server()
        self.addCleanup(s.close)
        s.add_user(user, pw)
        sent = [self.msgs.message(first + i, to=user) for i in range(5)]
        s.deliver_many(user, sent)
        m = s.imaps(user, pw)
        select(m)
        got = fetch_bodies(m)
        m.logout()
        uids = sorted(got)
        self.assertEqual([got[u] for u in uids], sent)
        self.assertEqual(s.stop(), 0)
        return s, sent, uids

    def check_damaged(self, s: Server, user: str, pw: str, sent: list[bytes], uids: list[int], bad: int):
        """After restart: FETCH of message `bad` → NO naming the damage, the others intact,
        an alert raised, server and session still usable."""
        s.start()
        with s.raw_imap() as r:
            r.login(user, pw)
            _, tagged, _ = r.command("SELECT INBOX")
            self.assertIn(b" OK", tagged)
            untagged, tagged, lits = r.command(f"UID FETCH {uids[bad]} (UID BODY[])")
            status = tagged.split(b" ", 2)
            self.assertEqual(status[1:2], [b"NO"], f"FETCH of the damaged message answered {tagged!r} after {untagged!r}")
            self.assertRegex(tagged, DAMAGE_WORDS, "the NO should say the message is damaged")
            self.assertEqual(lits, [], f"no message data may be sent for the damaged message: {untagged!r}")
            # The same session goes on working, for the other four messages too.
            for i, uid in enumerate(uids):
                if i == bad:
                    continue
                _, tagged, lits = r.command(f"UID FETCH {uid} (UID BODY.PEEK[])")
                self.assertIn(b" OK", tagged, f"FETCH of intact message {i}: {tagged!r}")
                self.assertEqual(lits, [sent[i]], f"intact message {i} must come back exactly")
            # A whole-mailbox fetch (what a client does to fill a folder view) still gets
            # every intact message, and a NO for the damaged one.
            untagged, tagged, lits = r.command("UID FETCH 1:* (UID BODY.PEEK[])")
            self.assertRegex(tagged, rb"^\S+ NO ", f"range FETCH over a damaged message: {tagged!r}")
            self.assertEqual(lits, [b for i, b in enumerate(sent) if i != bad],
                             "a range FETCH returns every intact message, exactly, and nothing of the damaged one")
            _, tagged, _ = r.command("NOOP")
            self.assertIn(b" OK", tagged)
        self.assertTrue(s.running(), "the server must stay up")

        # imaplib sees NO too (not an exception, not data).
        m = s.imaps(user, pw)
        try:
            select(m)
            typ, data = m.uid("FETCH", str(uids[bad]), "(BODY.PEEK[])")
            self.assertEqual(typ, "NO", data)
            good = fetch_bodies(m, ",".join(str(u) for i, u in enumerate(uids) if i != bad))
            self.assertEqual(sorted(good.values()), sorted(b for i, b in enumerate(sent) if i != bad))
            # Writes still work in the damaged slot.
            check(m.store("1", "+FLAGS", "(\\Flagged)"), "STORE after damage")
            self.assertIn("\\Flagged", fetch(m, "1", "(FLAGS)", uid=False)[0]["FLAGS"])
        finally:
            m.logout()
        self.assertTrue(s.deliver(user, self.msgs.message(999, to=user)).all_delivered(),
                        "delivery into the damaged mailbox still works")

        alerts = [e for e in s.alerts() if e.get("kind") == "corrupt_blob"]
        self.assertTrue(alerts, f"expected an alert of kind corrupt_blob; events: {s.events()}")
        r = s.cli("events")
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"corrupt_blob", r.stdout, "`tandem events` shows the alert")
        self.assertTrue(s.running())

    def test_flipped_byte_in_blob(self):
        user, pw = f"flip@{DOMAIN}", "flip-pw"
        s, sent, uids = self.setup_mailbox(user, pw, 0)
        bad = 2
        blob = s.blob_of(sent[bad])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        self.check_damaged(s, user, pw, sent, uids, bad)

    def test_deleted_blob(self):
        user, pw = f"gone@{DOMAIN}", "gone-pw"
        s, sent, uids = self.setup_mailbox(user, pw, 10)
        bad = 1
        s.blob_of(sent[bad]).unlink()
        self.check_damaged(s, user, pw, sent, uids, bad)


if __name__ == "__main__":
    unittest.main()
