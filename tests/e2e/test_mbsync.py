"""A real sync client: isync's `mbsync` against Tandem over IMAPS, down and up, then idle."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import unittest

from harness import (
    DOMAIN,
    MessageFactory,
    Server,
    check,
    crlf,
    fetch,
    fetch_bodies,
    select,
)

MBSYNC = shutil.which("mbsync")
N_MESSAGES = 200


def message_id(msg: bytes) -> bytes | None:
    mm = re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", msg)
    return mm.group(1) if mm else None


def strip_tuid(msg: bytes) -> bytes:
    """mbsync tags each message it propagates (in either direction) with an `X-TUID:`
    header so it can find it again after an interrupted run; that header is mbsync's, not
    a change by the server."""
    return re.sub(rb"(?mi)^X-TUID: [^\r\n]*\r?\n", b"", msg, count=1)


@unittest.skipIf(MBSYNC is None, "mbsync is not installed (Debian package isync): apt-get install isync")
class MbsyncTest(unittest.TestCase):
    msgs = MessageFactory(seed=303)

    def setUp(self):
        self.server = Server()
        self.addCleanup(self.server.close)
        self.user = f"sync@{DOMAIN}"
        self.pw = "sync-pw-1"
        self.server.add_user(self.user, self.pw)
        self.work = self.server.tmp / "mbsync"
        self.maildir = self.work / "Maildir"
        self.maildir.mkdir(parents=True)
        self.config = self.work / "mbsyncrc"
        self.config.write_text(f"""\
IMAPAccount tandem
Host 127.0.0.1
Port {self.server.ports['imaps']}
User {self.user}
Pass {self.pw}
SSLType IMAPS
CertificateFile {self.server.cert_path}
SystemCertificates no
AuthMechs LOGIN
Timeout 60

IMAPStore tandem-remote
Account tandem

MaildirStore tandem-local
Path {self.maildir}/
Inbox {self.maildir}/INBOX
SubFolders Verbatim

Channel tandem
Far :tandem-remote:
Near :tandem-local:
Patterns INBOX
Create Near
Expunge None
Sync All
SyncState *
""")

    def mbsync(self) -> str:
        env = dict(os.environ, HOME=str(self.work))
        r = subprocess.run([MBSYNC, "-c", str(self.config), "-V", "-Dn", "tandem"],
                           capture_output=True, timeout=180, env=env)
        out = (r.stdout + r.stderr).decode(errors="replace")
        self.assertEqual(r.returncode, 0, f"mbsync failed ({r.returncode}):\n{out[-4000:]}\nserver:\n{self.server.log_tail()}")
        return out

    def local_files(self) -> dict[str, bytes]:
        out = {}
        for sub in ("cur", "new"):
            d = self.maildir / "INBOX" / sub
            if d.is_dir():
                for f in d.iterdir():
                    out[f"{sub}/{f.name}"] = f.read_bytes()
        return out

    def server_state(self) -> tuple:
        m = self.server.imaps(self.user, self.pw)
        try:
            info = select(m, readonly=True)
            rows = fetch(m, "1:*", "(UID FLAGS)")
            return info["UIDVALIDITY"], info.get("UIDNEXT"), tuple(sorted((d["UID"], tuple(sorted(d["FLAGS"]))) for d in rows))
        finally:
            m.logout()

    def server_bodies(self) -> dict[int, bytes]:
        m = self.server.imaps(self.user, self.pw)
        try:
            select(m, readonly=True)
            return fetch_bodies(m)
        finally:
            m.logout()

    def test_sync_down_up_and_second_run_is_idle(self):
        # ---- down: 200 messages into an empty Maildir
        sent = [self.msgs.message(i, to=self.user) for i in range(N_MESSAGES)]
        self.server.deliver_many(self.user, sent)
        self.mbsync()
        local = self.local_files()
        self.assertEqual(len(local), N_MESSAGES, "every message synced down")
        # Maildir stores LF line ends; back to CRLF the bytes must be the delivered ones.
        by_id = {message_id(crlf(b)): strip_tuid(crlf(b)) for b in local.values()}
        for i, msg in enumerate(sent):
            mid = message_id(msg)
            self.assertIn(mid, by_id, f"message {i} {mid!r} missing from the Maildir")
            self.assertEqual(by_id[mid], msg, f"message {i} {mid!r} differs after sync down")

        # ---- up: three new local messages (LF line ends, as a local MUA writes them)
        new_dir = self.maildir / "INBOX" / "new"
        ups = [self.msgs.message(1000 + i, to=self.user) for i in range(3)]
        for i, msg in enumerate(ups):
            (new_dir / f"{int(time.time())}.e2e{i}.localhost").write_bytes(msg.replace(b"\r\n", b"\n"))
        # and a flag change on the server, which must come down
        m = self.server.imaps(self.user, self.pw)
        select(m)
        check(m.uid("STORE", "1", "+FLAGS", "(\\Flagged)"), "UID STORE")
        m.logout()
        self.mbsync()
        bodies = self.server_bodies()
        self.assertEqual(len(bodies), N_MESSAGES + 3, "the three local messages appear on the server")
        srv_by_id = {message_id(b): b for b in bodies.values()}
        for i, msg in enumerate(ups):
            mid = message_id(msg)
            self.assertIn(mid, srv_by_id, f"uploaded message {i} {mid!r} not on the server")
            self.assertEqual(strip_tuid(srv_by_id[mid]), msg, f"uploaded message {i} differs on the server")
        for i, msg in enumerate(sent):
            self.assertEqual(srv_by_id.get(message_id(msg)), msg, f"server copy of message {i} changed")
        flagged = [n for n, b in self.local_files().items() if message_id(crlf(b)) == message_id(sent[0])]
        self.assertEqual(len(flagged), 1)
        self.assertRegex(flagged[0], r":2,[A-Z]*F", "the server's \\Flagged reached the Maildir")

        # ---- a second run with nothing changed transfers nothing
        local_before = {n: (b, (self.maildir / "INBOX" / n).stat().st_mtime_ns) for n, b in self.local_files().items()}
        server_before = self.server_state()
        out = self.mbsync()
        local_after = {n: (b, (self.maildir / "INBOX" / n).stat().st_mtime_ns) for n, b in self.local_files().items()}
        self.assertEqual(server_before, self.server_state(), "an idle sync changed the server")
        self.assertEqual(local_before.keys(), local_after.keys(), "an idle sync changed the Maildir's files")
        self.assertEqual(local_before, local_after, "an idle sync rewrote Maildir files")
        # mbsync -Dn echoes every IMAP command it sends as `>>> TAG COMMAND ...`.
        sent_cmds = [ln for ln in out.splitlines() if ">>>" in ln]
        self.assertTrue(sent_cmds, f"expected mbsync's -Dn command trace:\n{out[-2000:]}")
        for ln in sent_cmds:
            self.assertNotRegex(ln, r"\b(APPEND|STORE|EXPUNGE)\b", "an idle sync sent a write")
            self.assertNotRegex(ln, r"BODY(\.PEEK)?\[\]", "an idle sync fetched a message body")


if __name__ == "__main__":
    unittest.main()
