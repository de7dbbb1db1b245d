"""CONDSTORE and QRESYNC (RFC 7162), IMAP4rev2 (RFC 9051) and IDLE across sessions.

Each test replays an example of the RFC against the real server over TLS, with the
numbers of this mailbox (UIDs, MODSEQs) in place of the RFC's, and checks the responses
line by line: which untagged responses come, in which order, with which data.
"""

from __future__ import annotations

import re
import statistics
import time
import unittest

from harness import MessageFactory, ServerTestCase, parse_uid_set, qstr


def code(lines: list[bytes], name: str) -> int | None:
    """The number of the first `[NAME n]` response code in `lines`."""
    for line in lines:
        m = re.search(rb"\[" + name.encode() + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    return None


def fetches(lines: list[bytes]) -> dict[int, bytes]:
    """Sequence number → the item list of each `* n FETCH (...)`, without `\\Recent` (which
    depends on which session saw a message first, RFC 3501 2.3.2)."""
    out = {}
    for line in lines:
        m = re.match(rb"\* (\d+) FETCH \((.*)\)$", line)
        if m:
            items = m.group(2).replace(b" \\Recent", b"").replace(b"\\Recent ", b"")
            out[int(m.group(1))] = items.replace(b"\\Recent", b"")
    return out


def modseq_of(items: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", items)
    assert m, items
    return int(m.group(1))


class CondstoreTest(ServerTestCase):
    msgs = MessageFactory(seed=7162)

    def session(self, user: str, pw: str, enable: str | None = None):
        r = self.server.raw_imap()
        self.addCleanup(r.close)
        r.login(user, pw)
        if enable:
            u, tagged, _ = r.command(f"ENABLE {enable}")
            self.assertIn(b" OK", tagged)
        return r

    def ok(self, r, text: str) -> list[bytes]:
        untagged, tagged, _ = r.command(text)
        self.assertIn(b" OK", tagged, f"{text} -> {tagged!r}")
        return untagged + [tagged]

    def mailbox_with(self, n: int) -> tuple[str, str]:
        user, pw = self.new_user()
        for i in range(n):
            r = self.server.deliver(user, self.msgs.message(i, to=user))
            self.assertTrue(r.all_delivered())
        return user, pw

    # ---- ENABLE and capabilities (RFC 5161, RFC 7162 3.2.3, RFC 9051)

    def test_capabilities_and_enable(self):
        user, pw = self.new_user()
        r = self.session(user, pw)
        caps = self.ok(r, "CAPABILITY")[0]
        for c in (b"IMAP4rev1", b"IMAP4rev2", b"CONDSTORE", b"QRESYNC", b"ENABLE"):
            self.assertIn(b" " + c, caps)
        untagged, tagged, _ = r.command("ENABLE QRESYNC CONDSTORE")
        # QRESYNC implies CONDSTORE: it was on before CONDSTORE was looked at.
        self.assertEqual(untagged, [b"* ENABLED QRESYNC"])
        untagged, tagged, _ = r.command("ENABLE QRESYNC X-UNKNOWN")
        self.assertEqual(untagged, [b"* ENABLED"], "only what this command turned on is listed")
        self.assertIn(b" OK", tagged)

    # ---- CONDSTORE (RFC 7162 3.1)

    def test_select_and_status_report_highestmodseq(self):
        user, pw = self.mailbox_with(3)
        r = self.session(user, pw)
        lines = self.ok(r, "SELECT INBOX (CONDSTORE)")
        top = code(lines, "HIGHESTMODSEQ")
        self.assertIsNotNone(top, lines)
        # RFC 7162 3.1.2.1: after a change the mailbox's HIGHESTMODSEQ has grown.
        self.ok(r, "STORE 1 +FLAGS (\\Flagged)")
        other = self.session(user, pw)
        st = self.ok(other, "STATUS INBOX (MESSAGES UIDNEXT HIGHESTMODSEQ)")[0]
        self.assertRegex(st, rb"^\* STATUS INBOX \(MESSAGES 3 UIDNEXT 4 HIGHESTMODSEQ \d+\)$")
        self.assertGreater(int(re.search(rb"HIGHESTMODSEQ (\d+)", st).group(1)), top)

    def test_fetch_modseq_and_changedsince(self):
        user, pw = self.mailbox_with(5)
        r = self.session(user, pw)
        self.ok(r, "SELECT INBOX")
        # RFC 7162 3.1.4.1 example: FETCH 1:3 (MODSEQ) (a CONDSTORE-enabling command).
        lines = self.ok(r, "FETCH 1:3 (MODSEQ)")
        f = fetches(lines)
        self.assertEqual(sorted(f), [1, 2, 3])
        for items in f.values():
            self.assertRegex(items, rb"^MODSEQ \(\d+\)$")
        base = max(modseq_of(i) for i in fetches(self.ok(r, "FETCH 1:* (MODSEQ)")).values())
        self.ok(r, "STORE 2,4 +FLAGS.SILENT ($Important)")
        # RFC 7162 3.1.4.1: FETCH 1:* (FLAGS) (CHANGEDSINCE n): only messages changed
        # after n, and MODSEQ comes with them.
        lines = self.ok(r, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {base})")
        f = fetches(lines)
        self.assertEqual(sorted(f), [2, 4], lines)
        for items in f.values():
            self.assertRegex(items, rb"^FLAGS \(\$Important\) MODSEQ \(\d+\)$")
        self.assertEqual(fetches(self.ok(r, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq_of(f[4])})")), {})

    def test_conditional_store_rfc7162_examples(self):
        user, pw = self.mailbox_with(10)
        r = self.session(user, pw, "CONDSTORE")
        self.ok(r, "SELECT INBOX")
        before = fetches(self.ok(r, "FETCH 1:10 (MODSEQ)"))
        since = max(modseq_of(i) for i in before.values())
        other = self.session(user, pw)
        self.ok(other, "SELECT INBOX")
        self.ok(other, "STORE 7,9 +FLAGS (\\Seen)")
        # RFC 7162 3.1.3 example: d105 STORE 7,5,9 (UNCHANGEDSINCE n) +FLAGS.SILENT
        # (\Deleted): 5 is stored (and, CONDSTORE being on, reported with its MODSEQ even
        # though .SILENT), 7 and 9 changed after n and come back in MODIFIED.
        untagged, tagged, _ = r.command(f"STORE 7,5,9 (UNCHANGEDSINCE {since}) +FLAGS.SILENT (\\Deleted)")
        stored = [l for l in untagged if b" FETCH " in l and b"MODSEQ" in l and b"FLAGS" not in l]
        self.assertEqual(len(stored), 1, untagged)
        # RFC 7162 3.1: with CONDSTORE on, the UID comes along too.
        self.assertRegex(stored[0], rb"^\* 5 FETCH \(UID 5 MODSEQ \(\d+\)\)$")
        self.assertRegex(tagged, rb" OK \[MODIFIED 7,9\] ")
        new = modseq_of(fetches(stored)[5])
        self.assertGreater(new, since)
        # The flag changes of 7 and 9 by the other session reach this one (with MODSEQ).
        seen = fetches(untagged)
        for n in (7, 9):
            self.assertRegex(seen[n], rb"^UID \d+ FLAGS \(\\Seen\) MODSEQ \(\d+\)$")
        # RFC 7162 3.1.3 example: UID STORE ... (UNCHANGEDSINCE) +FLAGS.SILENT: UID and
        # MODSEQ of each stored message; MODIFIED lists UIDs for UID STORE.
        uids = {n: int(re.search(rb"UID (\d+)", l).group(1))
                for n, l in fetches(self.ok(r, "FETCH 1:10 (UID)")).items()}
        untagged, tagged, _ = r.command(
            f"UID STORE {uids[6]},{uids[4]},{uids[9]} (UNCHANGEDSINCE {since}) +FLAGS.SILENT (\\Deleted)")
        got = sorted(l for l in untagged if b"FETCH" in l)
        self.assertEqual(len(got), 2, untagged)
        self.assertRegex(got[0], rb"^\* 4 FETCH \(UID %d MODSEQ \(\d+\)\)$" % uids[4])
        self.assertRegex(got[1], rb"^\* 6 FETCH \(UID %d MODSEQ \(\d+\)\)$" % uids[6])
        self.assertRegex(tagged, rb" OK \[MODIFIED %d\] " % uids[9])
        # UNCHANGEDSINCE 0 always fails (every message has a MODSEQ of at least 1).
        untagged, tagged, _ = r.command("STORE 1 (UNCHANGEDSINCE 0) FLAGS ()")
        self.assertRegex(tagged, rb" OK \[MODIFIED 1\] ")
        # A STORE that changes nothing assigns no new MODSEQ.
        st = self.ok(other, "STATUS INBOX (HIGHESTMODSEQ)")[0]
        top = int(re.search(rb"HIGHESTMODSEQ (\d+)", st).group(1))
        lines = self.ok(r, "STORE 5 +FLAGS (\\Deleted)")
        self.assertRegex(fetches(lines)[5], rb"^UID 5 FLAGS \(\\Deleted\) MODSEQ \(%d\)$" % new)
        st = self.ok(other, "STATUS INBOX (HIGHESTMODSEQ)")[0]
        self.assertEqual(int(re.search(rb"HIGHESTMODSEQ (\d+)", st).group(1)), top)

    def test_search_modseq(self):
        user, pw = self.mailbox_with(6)
        r = self.session(user, pw)
        self.ok(r, "SELECT INBOX")
        base = max(modseq_of(i) for i in fetches(self.ok(r, "FETCH 1:* (MODSEQ)")).values())
        self.ok(r, "STORE 2,5 +FLAGS ($Label1)")
        # RFC 7162 3.1.5 example: * SEARCH 2 5 6 7 11 12 18 19 20 23 (MODSEQ 917162500)
        untagged, tagged, _ = r.command(f"SEARCH MODSEQ {base + 1}")
        self.assertRegex(untagged[0], rb"^\* SEARCH 2 5 \(MODSEQ \d+\)$")
        top = int(re.search(rb"MODSEQ (\d+)", untagged[0]).group(1))
        self.assertGreater(top, base)
        untagged, _, _ = r.command(f"SEARCH MODSEQ {top + 1}")
        self.assertEqual(untagged, [b"* SEARCH"], "no MODSEQ when nothing matched")

    # ---- QRESYNC (RFC 7162 3.2)

    def test_qresync_select_reports_vanished_and_changes(self):
        user, pw = self.mailbox_with(12)
        r = self.session(user, pw, "QRESYNC")
        lines = self.ok(r, "SELECT INBOX")
        validity, modseq = code(lines, "UIDVALIDITY"), code(lines, "HIGHESTMODSEQ")
        r.close()
        # While the client is away: flags change on UIDs 3 and 8, UIDs 4, 5 and 10 are
        # expunged, one message arrives.
        other = self.session(user, pw)
        self.ok(other, "SELECT INBOX")
        self.ok(other, "UID STORE 3,8 +FLAGS ($Seen2)")
        self.ok(other, "UID STORE 4,5,10 +FLAGS (\\Deleted)")
        self.ok(other, "EXPUNGE")
        self.server.deliver(user, self.msgs.message(100, to=user))
        # RFC 7162 3.2.5.1 example A03: SELECT INBOX (QRESYNC (uidvalidity modseq
        # known-uids)); VANISHED (EARLIER) lists the known UIDs expunged since, then a
        # FETCH (UID FLAGS MODSEQ) for every message changed since.
        r = self.session(user, pw, "QRESYNC")
        untagged, tagged, _ = r.command(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:5,8:12))")
        self.assertIn(b" OK [READ-WRITE]", tagged)
        self.assertIn(b"* 10 EXISTS", untagged)
        vanished = [l for l in untagged if l.startswith(b"* VANISHED")]
        self.assertEqual(vanished, [b"* VANISHED (EARLIER) 4:5,10"])
        f = fetches(untagged)
        # UIDs now 1 2 3 6 7 8 9 11 12 13: UID 3 is message 3, 8 is 6, the new 13 is 10.
        self.assertEqual(sorted(f), [3, 6, 10], untagged)
        self.assertRegex(f[3], rb"^UID 3 FLAGS \(\$Seen2\) MODSEQ \(\d+\)$")
        self.assertRegex(f[6], rb"^UID 8 FLAGS \(\$Seen2\) MODSEQ \(\d+\)$")
        self.assertRegex(f[10], rb"^UID 13 FLAGS \(\) MODSEQ \(\d+\)$")
        # The responses come after the usual SELECT responses, VANISHED first.
        self.assertLess(untagged.index(vanished[0]), min(untagged.index(l) for l in untagged if b" FETCH " in l))
        self.assertGreater(untagged.index(vanished[0]), untagged.index(b"* 10 EXISTS"))
        # Without known UIDs every expunged UID is reported; a stale UIDVALIDITY gets
        # neither VANISHED nor FETCH (RFC 7162 3.2.5).
        untagged, _, _ = r.command(f"EXAMINE INBOX (QRESYNC ({validity} {modseq}))")
        self.assertEqual(untagged[0], b"* OK [CLOSED] Previous mailbox closed")
        self.assertIn(b"* VANISHED (EARLIER) 4:5,10", untagged)
        untagged, _, _ = r.command(f"EXAMINE INBOX (QRESYNC ({validity + 1} {modseq}))")
        self.assertFalse([l for l in untagged if b"VANISHED" in l or b" FETCH " in l], untagged)
        # QRESYNC parameters need ENABLE QRESYNC first.
        plain = self.session(user, pw)
        _, tagged, _ = plain.command(f"SELECT INBOX (QRESYNC ({validity} {modseq}))")
        self.assertIn(b" BAD ", tagged)

    def test_uid_fetch_vanished(self):
        user, pw = self.mailbox_with(8)
        r = self.session(user, pw, "QRESYNC")
        lines = self.ok(r, "SELECT INBOX")
        modseq = code(lines, "HIGHESTMODSEQ")
        other = self.session(user, pw)
        self.ok(other, "SELECT INBOX")
        self.ok(other, "UID STORE 2,6 +FLAGS (\\Deleted)")
        self.ok(other, "UID EXPUNGE 2,6")
        self.ok(other, "UID STORE 7 +FLAGS (\\Answered)")
        # RFC 7162 3.2.6 example: UID FETCH 300:500 (FLAGS) (CHANGEDSINCE n VANISHED).
        untagged, tagged, _ = r.command(f"UID FETCH 3:8 (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        self.assertIn(b" OK", tagged)
        self.assertEqual(untagged[0], b"* VANISHED (EARLIER) 6")
        f = fetches(untagged)
        self.assertTrue(any(re.match(rb"^UID 7 FLAGS \(\\Answered\) MODSEQ \(\d+\)$", v)
                            for v in f.values()), untagged)
        # The session's own view: the expunges of UIDs 2 and 6 arrive as VANISHED.
        self.assertIn(b"* VANISHED 2,6", untagged + self.ok(r, "NOOP"))
        # VANISHED without QRESYNC, or without CHANGEDSINCE, is a BAD.
        plain = self.session(user, pw)
        self.ok(plain, "SELECT INBOX")
        _, tagged, _ = plain.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
        self.assertIn(b" BAD ", tagged)
        _, tagged, _ = r.command("UID FETCH 1:* (FLAGS) (VANISHED)")
        self.assertIn(b" BAD ", tagged)

    def test_expunge_reporting_per_mode(self):
        user, pw = self.mailbox_with(5)
        q = self.session(user, pw, "QRESYNC")
        self.ok(q, "SELECT INBOX")
        rev1 = self.session(user, pw)
        self.ok(rev1, "SELECT INBOX")
        self.ok(q, "STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        # RFC 7162 3.2.10 example: EXPUNGE answered by VANISHED and the new
        # HIGHESTMODSEQ in the tagged OK.
        untagged, tagged, _ = q.command("EXPUNGE")
        self.assertEqual(untagged, [b"* VANISHED 2,4"])
        self.assertRegex(tagged, rb" OK \[HIGHESTMODSEQ \d+\] ")
        # A session without QRESYNC gets EXPUNGE, highest sequence number first.
        untagged = self.ok(rev1, "NOOP")[:-1]
        self.assertEqual(untagged[-2:], [b"* 4 EXPUNGE", b"* 2 EXPUNGE"])

    # ---- IMAP4rev2 (RFC 9051)

    def test_imap4rev2_responses(self):
        user, pw = self.mailbox_with(3)
        r = self.session(user, pw)
        untagged, _, _ = r.command("ENABLE IMAP4rev2")
        self.assertEqual(untagged, [b"* ENABLED IMAP4rev2"])
        lines = self.ok(r, "SELECT INBOX")
        # RFC 9051 6.3.2 example: no RECENT, no UNSEEN; a LIST response for the mailbox.
        self.assertFalse([l for l in lines if b"RECENT" in l or b"[UNSEEN" in l], lines)
        self.assertIn(b"* 3 EXISTS", lines)
        self.assertTrue(any(re.match(rb'^\* LIST \([^)]*\) "/" INBOX$', l) for l in lines), lines)
        # FETCH never shows \Recent; SEARCH answers ESEARCH (RFC 9051 6.4.4).
        lines = self.ok(r, "FETCH 1:* (FLAGS)")
        self.assertEqual(len(fetches(lines)), 3)
        self.assertFalse([l for l in lines if b"\\Recent" in l], lines)
        untagged, tagged, _ = r.command("UID SEARCH ALL")
        self.assertEqual(untagged, [b'* ESEARCH (TAG "%s") UID ALL 1:3' % tagged.split()[0]])
        untagged, tagged, _ = r.command("SEARCH KEYWORD nothing")
        self.assertEqual(untagged, [b'* ESEARCH (TAG "%s")' % tagged.split()[0]])

    # ---- IDLE across sessions

    def test_idle_sessions_see_deliveries_and_changes_within_100_ms(self):
        user, pw = self.mailbox_with(1)
        idlers = []
        modes = ("", "QRESYNC", "IMAP4rev2")
        for mode in modes:
            r = self.session(user, pw, mode or None)
            self.ok(r, "SELECT INBOX")
            r.send(b"i IDLE\r\n")
            self.assertTrue(r.readline().startswith(b"+"))
            idlers.append(r)
        writer = self.session(user, pw)
        self.ok(writer, "SELECT INBOX")
        delays = []
        for i in range(5):
            t0 = time.monotonic()
            self.assertTrue(self.server.deliver(user, self.msgs.message(200 + i, to=user)).all_delivered())
            t_ack = time.monotonic()
            for r, mode in zip(idlers, modes):
                line = r.readline(timeout=5)
                self.assertEqual(line, b"* %d EXISTS" % (i + 2))
                delays.append(time.monotonic() - t_ack)
                if mode != "IMAP4rev2":
                    self.assertRegex(r.readline(timeout=5), rb"^\* \d+ RECENT$")
            self.assertLess(t_ack - t0, 5)
        # A flag change by another session reaches every idler, with MODSEQ for QRESYNC.
        self.ok(writer, "STORE 1 +FLAGS (\\Flagged)")
        for r in idlers:
            line = r.readline(timeout=5)
            self.assertRegex(line, rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Flagged[^)]*\)( MODSEQ \(\d+\))?\)$")
        for r in idlers:
            r.send(b"DONE\r\n")
            _, tagged, _ = r.collect("i")
            self.assertIn(b" OK", tagged)
        median_ms = statistics.median(delays) * 1000
        self.assertLess(median_ms, 100, f"IDLE delivery latency (ms): {sorted(d * 1000 for d in delays)}")


if __name__ == "__main__":
    unittest.main()
