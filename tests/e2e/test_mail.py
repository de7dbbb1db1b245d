"""Mail in and out: LMTP delivery, IMAP over TLS, the commands a mail client relies on."""

from __future__ import annotations

import base64
import datetime
import imaplib
import time
import unittest

from harness import (
    DOMAIN,
    MessageFactory,
    ServerTestCase,
    check,
    fetch,
    fetch_bodies,
    fetch_flags,
    list_mailboxes,
    parse_fetch,
    parse_uid_set,
    response_code,
    search,
    select,
    status,
    tagged_code,
    unverified_context,
)

UTC = datetime.timezone.utc


class MailTest(ServerTestCase):
    """Against one server with plaintext auth off (the default)."""

    msgs = MessageFactory(seed=101)

    def deliver_n(self, user: str, n: int, start: int = 0) -> list[bytes]:
        out = []
        for i in range(start, start + n):
            m = self.msgs.message(i, to=user)
            r = self.server.deliver(user, m)
            self.assertTrue(r.all_delivered(), f"LMTP delivery of message {i} to {user}: {r}")
            out.append(m)
        return out

    # ---- delivery and read-back

    def test_lmtp_delivery_reads_back_identical_bytes(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 6)
        m = self.login(user, pw)
        info = select(m, "INBOX")
        self.assertEqual(info["EXISTS"], 6)
        got = fetch_bodies(m)
        self.assertEqual(len(got), 6)
        uids = sorted(got)
        self.assertEqual(uids, sorted(set(uids)))
        for i, uid in enumerate(uids):
            self.assertEqual(got[uid], sent[i], f"message {i} (uid {uid}) differs from what LMTP delivered")
        sizes = {d["UID"]: d["RFC822.SIZE"] for d in fetch(m, "1:*", "(UID RFC822.SIZE)")}
        for i, uid in enumerate(uids):
            self.assertEqual(sizes[uid], len(sent[i]), f"RFC822.SIZE of uid {uid}")
        # Reading with PEEK must not have set \Seen.
        for uid, flags in fetch_flags(m).items():
            self.assertNotIn("\\Seen", flags, f"uid {uid} after BODY.PEEK[]")

    def test_seen_set_by_body_fetch_not_by_peek(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 2)
        m = self.login(user, pw)
        select(m)
        d = fetch(m, "1", "(UID BODY.PEEK[])", uid=False)
        self.assertEqual(d[0]["BODY[]"], sent[0])
        self.assertNotIn("\\Seen", fetch_flags(m, "1:*")[d[0]["UID"]])
        d = fetch(m, "1", "(UID BODY[])", uid=False)
        self.assertEqual(d[0]["BODY[]"], sent[0])
        flags = fetch_flags(m)
        uids = sorted(flags)
        self.assertIn("\\Seen", flags[uids[0]], "BODY[] fetch must set \\Seen")
        self.assertNotIn("\\Seen", flags[uids[1]], "the other message must stay unseen")
        # Visible from another session too (the flag is stored, not just cached).
        m2 = self.login(user, pw)
        select(m2, readonly=True)
        self.assertIn("\\Seen", fetch_flags(m2)[uids[0]])

    def test_store_flags_add_remove_replace(self):
        user, pw = self.new_user()
        self.deliver_n(user, 3)
        m = self.login(user, pw)
        select(m)
        check(m.store("1", "+FLAGS", "(\\Flagged $Label1)"), "STORE +FLAGS")
        check(m.store("2", "+FLAGS", "(\\Answered)"), "STORE +FLAGS")
        f = fetch_flags(m)
        u1, u2, u3 = sorted(f)
        self.assertEqual(f[u1], {"\\Flagged", "$Label1"})
        self.assertEqual(f[u2], {"\\Answered"})
        self.assertEqual(f[u3], set())
        check(m.store("1", "-FLAGS", "(\\Flagged)"), "STORE -FLAGS")
        self.assertEqual(fetch_flags(m)[u1], {"$Label1"})
        check(m.store("1:2", "FLAGS", "(\\Draft \\Seen)"), "STORE FLAGS")
        f = fetch_flags(m)
        self.assertEqual(f[u1], {"\\Draft", "\\Seen"})
        self.assertEqual(f[u2], {"\\Draft", "\\Seen"})
        check(m.store("1:*", "-FLAGS.SILENT", "(\\Seen)"), "STORE -FLAGS.SILENT")
        f = fetch_flags(m)
        self.assertEqual((f[u1], f[u2], f[u3]), ({"\\Draft"}, {"\\Draft"}, set()))
        # Flags survive a new session.
        m2 = self.login(user, pw)
        select(m2, readonly=True)
        self.assertEqual(fetch_flags(m2)[u1], {"\\Draft"})

    def test_expunge_removes_only_deleted(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 4)
        m = self.login(user, pw)
        select(m)
        uids = sorted(fetch_flags(m))
        check(m.store("2:3", "+FLAGS", "(\\Deleted)"), "STORE \\Deleted")
        typ, data = m.expunge()
        self.assertEqual(typ, "OK", data)
        self.assertEqual(len([d for d in data if d]), 2, f"EXPUNGE responses: {data!r}")
        got = fetch_bodies(m)
        self.assertEqual(sorted(got), [uids[0], uids[3]])
        self.assertEqual(got[uids[0]], sent[0])
        self.assertEqual(got[uids[3]], sent[3])
        self.assertEqual(select(m)["EXISTS"], 2)

    # ---- moving messages between mailboxes

    def test_copy_reports_copyuid_and_copies_bytes(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 3)
        m = self.login(user, pw)
        check(m.create("Keep"), "CREATE Keep")
        select(m)
        src = sorted(fetch_flags(m))
        m.untagged_responses.pop("COPYUID", None)
        typ, data = m.uid("COPY", f"{src[0]}:{src[-1]}", "Keep")
        self.assertEqual(typ, "OK", data)
        code = tagged_code(m, data, "COPYUID")
        self.assertIsNotNone(code, f"no COPYUID in the COPY response: {data!r}")
        validity, src_set, dst_set = int(code[0]), parse_uid_set(code[1]), parse_uid_set(code[2])
        self.assertEqual(sorted(src_set), src)
        self.assertEqual(len(dst_set), 3)
        # The source is untouched.
        self.assertEqual(fetch_bodies(m), dict(zip(src, sent)))
        keep = select(m, "Keep")
        self.assertEqual(keep["EXISTS"], 3)
        self.assertEqual(keep["UIDVALIDITY"], validity)
        got = fetch_bodies(m)
        by_src = dict(zip(src, sent))
        for s, d in zip(src_set, dst_set):
            self.assertEqual(got.get(d), by_src[s], f"COPYUID says {s} → {d}, but the bytes differ")

    def test_move(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 3)
        m = self.login(user, pw)
        check(m.create("Dest"), "CREATE Dest")
        select(m)
        src = sorted(fetch_flags(m))
        m.untagged_responses.pop("EXPUNGE", None)
        typ, data = m.uid("MOVE", str(src[1]), "Dest")
        self.assertEqual(typ, "OK", data)
        self.assertTrue(m.untagged_responses.get("EXPUNGE"), "MOVE must send EXPUNGE for the moved message")
        self.assertEqual(fetch_bodies(m), {src[0]: sent[0], src[2]: sent[2]})
        select(m, "Dest")
        self.assertEqual(list(fetch_bodies(m).values()), [sent[1]])

    def test_rename_mailbox_keeps_messages_and_children(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 2)
        m = self.login(user, pw)
        check(m.create("Projects"), "CREATE Projects")
        check(m.create("Projects/Sub"), "CREATE Projects/Sub")
        select(m)
        check(m.uid("COPY", "1:*", "Projects"), "COPY")
        check(m.rename("Projects", "Done"), "RENAME Projects Done")
        names = set(list_mailboxes(m))
        self.assertIn("Done", names)
        self.assertIn("Done/Sub", names, "children move with their parent")
        self.assertNotIn("Projects", names)
        self.assertNotIn("Projects/Sub", names)
        select(m, "Done")
        self.assertEqual(sorted(fetch_bodies(m).values()), sorted(sent))
        typ, _ = m.select("Projects")
        self.assertEqual(typ, "NO", "the old name must be gone")

    def test_rename_inbox_moves_messages_and_leaves_empty_inbox(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 3)
        m = self.login(user, pw)
        check(m.rename("INBOX", "Old"), "RENAME INBOX Old")
        self.assertEqual(select(m, "Old")["EXISTS"], 3)
        self.assertEqual(sorted(fetch_bodies(m).values()), sorted(sent))
        self.assertIn("INBOX", {n.upper() for n in list_mailboxes(m)})
        self.assertEqual(select(m, "INBOX")["EXISTS"], 0, "INBOX stays, empty")
        # New mail still lands in the (new, empty) INBOX.
        more = self.deliver_n(user, 1, start=10)
        select(m, "INBOX")
        self.assertEqual(list(fetch_bodies(m).values()), more)

    def test_create_delete_list_lsub_subscribe(self):
        user, pw = self.new_user()
        m = self.login(user, pw)
        boxes = list_mailboxes(m)
        special = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Junk": "\\Junk", "Trash": "\\Trash", "Archive": "\\Archive"}
        self.assertIn("INBOX", boxes)
        for name, attr in special.items():
            self.assertIn(name, boxes, f"new accounts get {name}")
            self.assertIn(attr, boxes[name]["attrs"], f"{name} has SPECIAL-USE {attr}: {boxes[name]}")
        for name, b in boxes.items():
            self.assertEqual(b["delim"], "/", f"hierarchy separator of {name}")

        check(m.create("Lists"), "CREATE Lists")
        check(m.create("Lists/Rust"), "CREATE Lists/Rust")
        typ, data = m.create("Lists/Rust")
        self.assertEqual(typ, "NO", f"CREATE of an existing mailbox: {data!r}")
        self.assertEqual(set(list_mailboxes(m, '""', '"Lists/%"')), {"Lists/Rust"})
        self.assertIn("Lists/Rust", list_mailboxes(m))

        check(m.subscribe("Lists/Rust"), "SUBSCRIBE")
        self.assertIn("Lists/Rust", list_mailboxes(m, cmd="LSUB"))
        check(m.unsubscribe("Lists/Rust"), "UNSUBSCRIBE")
        self.assertNotIn("Lists/Rust", list_mailboxes(m, cmd="LSUB"))

        # Deleting a mailbox deletes its messages: re-created, it is empty.
        check(m.append("Lists/Rust", None, None, self.msgs.message(50, to=user)), "APPEND")
        check(m.delete("Lists/Rust"), "DELETE Lists/Rust")
        self.assertNotIn("Lists/Rust", list_mailboxes(m))
        typ, data = m.delete("Lists/Rust")
        self.assertEqual(typ, "NO", f"DELETE of a missing mailbox: {data!r}")
        check(m.create("Lists/Rust"), "CREATE Lists/Rust again")
        self.assertEqual(status(m, "Lists/Rust")["MESSAGES"], 0)
        typ, data = m.delete("INBOX")
        self.assertEqual(typ, "NO", f"DELETE INBOX must be refused: {data!r}")

    def test_status(self):
        user, pw = self.new_user()
        self.deliver_n(user, 3)
        m = self.login(user, pw)
        info = select(m)
        check(m.store("1", "+FLAGS", "(\\Seen)"), "STORE")
        uids = sorted(fetch_flags(m))
        m2 = self.login(user, pw)
        st = status(m2, "INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
        self.assertEqual(st["MESSAGES"], 3)
        self.assertEqual(st["UNSEEN"], 2)
        self.assertGreater(st["UIDNEXT"], uids[-1])
        self.assertEqual(st["UIDVALIDITY"], info["UIDVALIDITY"])
        st = status(m2, "Trash", "(MESSAGES UNSEEN)")
        self.assertEqual(st, {"MESSAGES": 0, "UNSEEN": 0})

    def test_search(self):
        user, pw = self.new_user()
        f = self.msgs
        mails = [
            f.message(201, kind="plain", from_="Carol Example <carol@example.org>", subject="Quarterly kumquat report", to=user),
            f.message(202, kind="plain", from_="Dave <dave@example.org>", subject="Lunch", to=user, extra_body="zebraword here"),
            f.message(203, kind="utf8", from_="Carol Example <carol@example.org>", subject="Re: Lunch", to=user),
            f.message(204, kind="multipart", from_="erin@example.org", subject="Photos", to=user),
        ]
        for b in mails:
            self.assertTrue(self.server.deliver(user, b).all_delivered())
        m = self.login(user, pw)
        old = f.message(205, kind="plain", from_="old@example.org", subject="Old news", to=user)
        when = imaplib.Time2Internaldate(datetime.datetime(2020, 1, 1, 12, tzinfo=UTC))
        check(m.append("INBOX", None, when, old), "APPEND")
        select(m)
        check(m.store("2", "+FLAGS", "(\\Seen)"), "STORE")
        uids = sorted(fetch_flags(m))
        self.assertEqual(len(uids), 5)

        def s(*c):
            return search(m, *c)

        self.assertEqual(s("FROM", "carol"), [1, 3])
        self.assertEqual(s("SUBJECT", "kumquat"), [1])
        self.assertEqual(s("SUBJECT", "lunch"), [2, 3], "SUBJECT is case-insensitive")
        self.assertEqual(s("BODY", "zebraword"), [2])
        self.assertEqual(s("BODY", f.token(204)), [4], "BODY searches inside a multipart's text part")
        self.assertEqual(s("SINCE", "1-Jan-2021"), [1, 2, 3, 4])
        self.assertEqual(s("BEFORE", "1-Jan-2021"), [5])
        tomorrow = (datetime.datetime.now(UTC) + datetime.timedelta(days=2)).strftime("%d-%b-%Y")
        self.assertEqual(s("SINCE", tomorrow), [])
        self.assertEqual(s("UNSEEN"), [1, 3, 4, 5])
        self.assertEqual(s("SEEN"), [2])
        self.assertEqual(s("NOT", "FROM", "carol"), [2, 4, 5])
        self.assertEqual(s("OR", "FROM", "dave", "FROM", "erin"), [2, 4])
        self.assertEqual(s("FROM", "carol", "UNSEEN"), [1, 3])
        self.assertEqual(s("2:3"), [2, 3])
        self.assertEqual(s("SUBJECT", "no-such-subject-anywhere"), [])
        self.assertEqual(search(m, "UID", f"{uids[1]}:{uids[3]}", uid=True), uids[1:4])
        self.assertEqual(search(m, "UID", f"{uids[3]}:*", uid=True), uids[3:])
        self.assertEqual(search(m, "FROM", "carol", uid=True), [uids[0], uids[2]])
        self.assertEqual(search(m, "UID", f"{uids[-1] + 100}:*", uid=True), [uids[-1]],
                         "n:* with n past the last UID still matches the last message (RFC 3501)")

    def test_uid_fetch_and_store_after_expunge(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 3)
        m = self.login(user, pw)
        select(m)
        u1, u2, u3 = sorted(fetch_flags(m))
        check(m.uid("STORE", str(u1), "+FLAGS", "(\\Deleted)"), "UID STORE")
        check(m.expunge(), "EXPUNGE")
        # Sequence numbers shifted, UIDs did not.
        d = fetch(m, str(u2), "(UID BODY.PEEK[])")
        self.assertEqual(len(d), 1)
        self.assertEqual((d[0]["SEQ"], d[0]["UID"], d[0]["BODY[]"]), (1, u2, sent[1]))
        data = check(m.uid("STORE", str(u3), "+FLAGS", "(\\Answered)"), "UID STORE")
        resp = [x for x in parse_fetch(data) if x.get("FLAGS") is not None]
        self.assertTrue(resp, f"UID STORE returns the new flags: {data!r}")
        self.assertEqual(resp[0].get("UID"), u3, f"UID STORE's FETCH response includes the UID: {data!r}")
        self.assertIn("\\Answered", resp[0]["FLAGS"])
        self.assertEqual(fetch_flags(m), {u2: set(), u3: {"\\Answered"}})
        self.assertEqual(fetch(m, str(u3 + 50), "(UID FLAGS)"), [], "UID FETCH of a missing UID returns nothing")
        self.assertEqual(fetch(m, f"{u1}", "(UID FLAGS)"), [], "an expunged UID is gone")

    def test_append_with_flags_reports_appenduid(self):
        user, pw = self.new_user()
        m = self.login(user, pw)
        msg = self.msgs.message(300, kind="utf8", to=user)
        dt = datetime.datetime(2024, 2, 29, 13, 14, 15, tzinfo=UTC)
        typ, data = m.append("Drafts", "(\\Draft \\Seen)", imaplib.Time2Internaldate(dt), msg)
        self.assertEqual(typ, "OK", data)
        code = response_code(data, "APPENDUID")
        self.assertIsNotNone(code, f"no APPENDUID in the APPEND response: {data!r}")
        validity, uid = int(code[0]), int(code[1])
        info = select(m, "Drafts")
        self.assertEqual(info["UIDVALIDITY"], validity)
        d = fetch(m, str(uid), "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        self.assertEqual(len(d), 1, f"APPENDUID names uid {uid}, which FETCH does not find")
        self.assertEqual(d[0]["BODY[]"], msg)
        self.assertEqual(set(d[0]["FLAGS"]) - {"\\Recent"}, {"\\Draft", "\\Seen"})
        t = imaplib.Internaldate2tuple(b'INTERNALDATE "' + d[0]["INTERNALDATE"] + b'"')
        self.assertEqual(time.mktime(t), dt.timestamp(), f"INTERNALDATE {d[0]['INTERNALDATE']!r}")

    # ---- LMTP specifics

    def test_plus_detail_delivers_to_existing_folder(self):
        user, pw = self.new_user()
        local, domain = user.split("@")
        m = self.login(user, pw)
        check(m.create("Work"), "CREATE Work")
        a = self.msgs.message(400, to=user)
        b = self.msgs.message(401, to=user)
        self.assertTrue(self.server.deliver(f"{local}+Work@{domain}", a).all_delivered())
        self.assertTrue(self.server.deliver(f"{local}+NoSuchFolder@{domain}", b).all_delivered())
        select(m, "Work")
        self.assertEqual(list(fetch_bodies(m).values()), [a])
        select(m, "INBOX")
        self.assertEqual(list(fetch_bodies(m).values()), [b], "+detail without such a folder goes to INBOX")

    def test_unknown_recipient_gets_550_511_at_rcpt(self):
        with self.server.lmtp() as l:
            r = l.transaction("s@example.net", [f"nobody-here@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
            code, text = r.rcpt[f"nobody-here@{DOMAIN}"]
            self.assertEqual(code, 550, text)
            self.assertTrue(text.startswith(b"5.1.1"), f"enhanced code 5.1.1 expected: {text!r}")
            # The connection stays usable.
            self.assertEqual(l.noop()[0], 250)

    def test_multi_recipient_transaction_has_per_recipient_replies(self):
        a, pa = self.new_user()
        b, pb = self.new_user()
        nobody = f"nobody-multi@{DOMAIN}"
        msg = self.msgs.message(500, to=f"{a}, {b}")
        r = self.server.deliver([a, nobody, b], msg)
        self.assertEqual([r.rcpt[x][0] for x in (a, nobody, b)], [250, 550, 250], r.rcpt)
        self.assertEqual(list(r.data), [a, b], "one DATA reply per accepted recipient, in order")
        self.assertEqual([r.data[x][0] for x in (a, b)], [250, 250], r.data)
        for user, pw in ((a, pa), (b, pb)):
            m = self.login(user, pw)
            select(m)
            self.assertEqual(list(fetch_bodies(m).values()), [msg], f"{user}'s copy")

    def test_idle_sees_exists_within_a_second_of_delivery(self):
        user, pw = self.new_user()
        self.deliver_n(user, 1)
        with self.server.raw_imap() as r:
            r.login(user, pw)
            _, tagged, _ = r.command("SELECT INBOX")
            self.assertIn(b" OK", tagged)
            tag = r.next_tag()
            r.send(f"{tag} IDLE\r\n".encode())
            cont = r.readline(5)
            self.assertTrue(cont.startswith(b"+"), f"IDLE continuation expected: {cont!r}")
            res = self.server.deliver(user, self.msgs.message(600, to=user))
            acked = time.monotonic()
            self.assertTrue(res.all_delivered())
            seen = None
            lines = []
            while time.monotonic() - acked < 1.0:
                try:
                    line = r.readline(max(0.01, 1.0 - (time.monotonic() - acked)))
                except TimeoutError:
                    break
                lines.append(line)
                if line.startswith(b"* 2 EXISTS"):
                    seen = time.monotonic() - acked
                    break
            self.assertIsNotNone(seen, f"no '* 2 EXISTS' within 1 s of the LMTP 250; got {lines!r}")
            r.send(b"DONE\r\n")
            _, tagged, _ = r.collect(tag, 5)
            self.assertIn(b" OK", tagged, "IDLE ends with OK after DONE")

    # ---- authentication and TLS

    def test_starttls_then_login(self):
        user, pw = self.new_user()
        self.deliver_n(user, 1)
        m = self.server.imap_plain()
        try:
            self.assertIn("STARTTLS", m.capabilities)
            m.starttls(ssl_context=unverified_context())
            self.assertNotIn("LOGINDISABLED", m.capabilities, "LOGINDISABLED must go after STARTTLS")
            check(m.login(user, pw), "LOGIN after STARTTLS")
            self.assertEqual(select(m)["EXISTS"], 1)
        finally:
            m.logout()

    def test_login_refused_before_starttls(self):
        user, pw = self.new_user()
        m = self.server.imap_plain()
        try:
            self.assertIn("LOGINDISABLED", m.capabilities, f"capabilities before STARTTLS: {m.capabilities}")
            with self.assertRaises(imaplib.IMAP4.error):
                m.login(user, pw)
            self.assertEqual(m.state, "NONAUTH")
            self.assertEqual(m.noop()[0], "OK", "the connection stays usable")
        finally:
            m.logout()

    def test_no_authentication_of_any_kind_before_starttls(self):
        user, pw = self.new_user()
        with self.server.raw_imap(tls=False) as r:
            untagged, _, _ = r.command("CAPABILITY")
            caps = b" ".join(untagged).upper()
            self.assertIn(b"LOGINDISABLED", caps)
            self.assertNotIn(b"AUTH=PLAIN", caps, "AUTH=PLAIN must not be offered before TLS")
            ir = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
            _, tagged, _ = r.command(f"AUTHENTICATE PLAIN {ir}")
            self.assertRegex(tagged, rb"^\S+ (NO|BAD)", f"AUTHENTICATE PLAIN before STARTTLS: {tagged!r}")
            _, tagged, _ = r.command("SELECT INBOX")
            self.assertRegex(tagged, rb"^\S+ (NO|BAD)", "still not authenticated")

    def test_commands_pipelined_behind_starttls_are_not_run(self):
        """Plaintext sent in the same packet as STARTTLS must be discarded, never executed
        inside the TLS session (the CVE-2011-0411 class of bugs)."""
        user, pw = self.new_user()
        with self.server.raw_imap(tls=False) as r:
            r.send(f'S1 STARTTLS\r\nS2 LOGIN "{user}" "{pw}"\r\n'.encode())
            untagged, tagged, _ = r.collect("S1", 5)
            self.assertTrue(tagged.startswith(b"S1 OK"), f"STARTTLS: {untagged!r} {tagged!r}")
            r.start_tls()
            _, tagged, _ = r.command("SELECT INBOX", tag="S3")
            self.assertRegex(tagged, rb"^S3 (NO|BAD)", "the injected LOGIN must not have authenticated the TLS session")
            r.login(user, pw)
            _, tagged, _ = r.command("SELECT INBOX", tag="S4")
            self.assertTrue(tagged.startswith(b"S4 OK"), tagged)

    def test_wrong_password_gets_authenticationfailed(self):
        user, pw = self.new_user()
        with self.server.raw_imap() as r:
            _, tagged, _ = r.command(f'LOGIN "{user}" "not-the-password"')
            parts = tagged.split(b" ", 2)
            self.assertEqual(parts[1:2], [b"NO"], f"wrong password: {tagged!r}")
            self.assertTrue(parts[2].startswith(b"[AUTHENTICATIONFAILED]"), f"wrong password: {tagged!r}")
            # A right password on the same connection then works.
            r.login(user, pw)

    # ---- durability of identity

    def test_uidvalidity_stable_across_restart(self):
        user, pw = self.new_user()
        sent = self.deliver_n(user, 2)
        m = self.server.imaps(user, pw)
        check(m.create("Stable"), "CREATE Stable")
        before = select(m)
        before_uids = sorted(fetch_flags(m))
        before_stable = status(m, "Stable", "(UIDVALIDITY UIDNEXT)")
        m.logout()

        self.server.restart()  # SIGTERM
        m = self.server.imaps(user, pw)
        after = select(m)
        self.assertEqual(after["UIDVALIDITY"], before["UIDVALIDITY"], "INBOX UIDVALIDITY after a clean restart")
        self.assertEqual(status(m, "Stable", "(UIDVALIDITY UIDNEXT)"), before_stable)
        self.assertEqual(sorted(fetch_flags(m)), before_uids)
        m.logout()

        sent += self.deliver_n(user, 1, start=2)
        self.server.restart(kill=True)  # SIGKILL
        m = self.server.imaps(user, pw)
        try:
            after = select(m)
            self.assertEqual(after["UIDVALIDITY"], before["UIDVALIDITY"], "INBOX UIDVALIDITY after SIGKILL")
            got = fetch_bodies(m)
            uids = sorted(got)
            self.assertEqual(uids[:2], before_uids)
            self.assertGreaterEqual(uids[2], before["UIDNEXT"], "a new message never reuses a UID")
            self.assertEqual([got[u] for u in uids], sent)
            self.assertEqual(status(m, "Stable", "(UIDVALIDITY UIDNEXT)"), before_stable)
        finally:
            m.logout()


class PlaintextAuthTest(ServerTestCase):
    """`allow_plaintext_auth = true`: LOGIN works on the plain port without STARTTLS."""

    server_kwargs = {"allow_plaintext_auth": True}

    def test_login_without_tls_when_allowed(self):
        user, pw = self.new_user()
        msg = MessageFactory(seed=102).message(1, to=user)
        self.assertTrue(self.server.deliver(user, msg).all_delivered())
        m = self.server.imap_plain()
        try:
            self.assertNotIn("LOGINDISABLED", m.capabilities)
            check(m.login(user, pw), "LOGIN without TLS")
            select(m)
            self.assertEqual(list(fetch_bodies(m).values()), [msg])
        finally:
            m.logout()


if __name__ == "__main__":
    unittest.main()
