"""A real two-way sync client: Debian's `offlineimap` (package offlineimap3) against Tandem
over IMAPS with a local Maildir: sync down, flag and delete changes on both sides, resync,
then an idle run.

CONDSTORE/QRESYNC: the offlineimap Debian ships (offlineimap3, `offlineimap --version` 8.0.0)
has no CONDSTORE or QRESYNC code at all — it never sends ENABLE or CHANGEDSINCE and finds
changes by fetching every UID's FLAGS and comparing them with its own status database. So
this test pins sync and resync correctness against a real client; the CONDSTORE/QRESYNC
paths are covered by test_condstore.py and by clients that use them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import unittest

from harness import (
    DOMAIN,
    MessageFactory,
    Server,
    check,
    crlf,
    fetch_bodies,
    fetch_flags,
    select,
)

OFFLINEIMAP = shutil.which("offlineimap")
N_MESSAGES = 50

# Maildir info letters (the `:2,` suffix) ↔ IMAP system flags.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}


def message_id(msg: bytes) -> bytes | None:
    mm = re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", msg)
    return mm.group(1) if mm else None


def maildir_flags(name: str) -> set[str]:
    _, sep, info = name.partition(":2,")
    return {MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS} if sep else set()


def maildir_uid(name: str) -> int | None:
    """offlineimap names each synced file `...,U=<server UID>,FMD5=...`."""
    mm = re.search(r",U=(\d+)", name)
    return int(mm.group(1)) if mm else None


@unittest.skipIf(OFFLINEIMAP is None and not os.environ.get("CI"),
                 "offlineimap is not installed (Debian package offlineimap3; scripts/test installs it)")
class OfflineimapTest(unittest.TestCase):
    msgs = MessageFactory(seed=4243)

    def setUp(self):
        # Under CI a missing client is a failure, not a skip: scripts/test installs it.
        self.assertIsNotNone(OFFLINEIMAP, "offlineimap must be installed (scripts/test installs offlineimap3)")
        self.server = Server()
        self.addCleanup(self.server.close)
        self.user = f"offline@{DOMAIN}"
        self.pw = "offline pw 1"
        self.server.add_user(self.user, self.pw)
        self.work = self.server.tmp / "offlineimap"
        self.maildir = self.work / "Maildir"
        self.maildir.mkdir(parents=True)
        self.config = self.work / "offlineimaprc"
        # `localhost`, not 127.0.0.1: offlineimap's own certificate check matches DNS names
        # only ("no matching domain name found in certificate" for an IP address), and the
        # server's self-signed certificate names localhost. create_connection() tries every
        # address localhost resolves to, so a `::1`-first resolver still reaches 127.0.0.1.
        self.config.write_text(f"""\
[general]
accounts = tandem
metadata = {self.work / "meta"}
maxsyncaccounts = 1

[Account tandem]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {self.maildir}

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {self.server.ports['imaps']}
remoteuser = {self.user}
remotepass = {self.pw}
ssl = yes
sslcacertfile = {self.server.cert_path}
auth_mechanisms = LOGIN
maxconnections = 1
holdconnectionopen = no
folderfilter = lambda f: f == 'INBOX'
""")
        self.inbox = self.maildir / "INBOX"
        self.runs = 0

    def offlineimap(self) -> str:
        """One sync (`-o`), plain UI, with the IMAP protocol trace (`-d imap`) in the log."""
        # One log per run, kept with the server's temp dir under TANDEM_E2E_KEEP=1.
        self.runs += 1
        log = self.work / f"run{self.runs}.log"
        env = dict(os.environ, HOME=str(self.work))
        r = subprocess.run([OFFLINEIMAP, "-c", str(self.config), "-o", "-u", "basic", "-d", "imap",
                            "-l", str(log)], capture_output=True, timeout=120, env=env)
        out = (r.stdout + r.stderr).decode(errors="replace")
        trace = log.read_text(errors="replace") if log.exists() else ""
        self.assertEqual(r.returncode, 0, f"offlineimap failed ({r.returncode}):\n{out[-4000:]}\n"
                                          f"trace:\n{trace[-4000:]}\nserver:\n{self.server.log_tail()}")
        # offlineimap reports some failures (a folder it could not sync) only in its output.
        self.assertNotRegex(out, r"(?m)^ERROR:", f"offlineimap reported an error:\n{out[-4000:]}")
        return trace

    def local_files(self) -> dict[str, bytes]:
        """`cur/NAME` or `new/NAME` → bytes."""
        out = {}
        for sub in ("cur", "new"):
            d = self.inbox / sub
            if d.is_dir():
                for f in d.iterdir():
                    out[f"{sub}/{f.name}"] = f.read_bytes()
        return out

    def local_by_id(self) -> dict[bytes, tuple[str, bytes]]:
        """Message-ID → (file name, bytes with CRLF line ends)."""
        out = {}
        for name, b in self.local_files().items():
            msg = crlf(b)
            mid = message_id(msg)
            self.assertNotIn(mid, out, f"two Maildir files hold {mid!r}")
            out[mid] = (name, msg)
        return out

    def server_by_id(self) -> dict[bytes, tuple[int, set[str], bytes]]:
        """Message-ID → (UID, flags, bytes) on the server."""
        m = self.server.imaps(self.user, self.pw)
        try:
            select(m, readonly=True)
            bodies = fetch_bodies(m)
            flags = fetch_flags(m)
        finally:
            m.logout()
        out = {}
        for uid, b in bodies.items():
            mid = message_id(b)
            self.assertNotIn(mid, out, f"two server messages hold {mid!r}")
            out[mid] = (uid, flags[uid], b)
        return out

    def server_state(self) -> tuple:
        """UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and every UID's flags: any write changes it."""
        m = self.server.imaps(self.user, self.pw)
        try:
            typ, data = m.status("INBOX", "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ MESSAGES)")
            check((typ, data), "STATUS")
            select(m, readonly=True)
            return data[0], tuple(sorted(fetch_flags(m).items()))
        finally:
            m.logout()

    def rename_with_flags(self, name: str, letters: str) -> None:
        """What a local MUA does to flag a message: rewrite the `:2,` info, keep the rest."""
        base = name.split("/", 1)[1].partition(":2,")[0]
        old = set(name.partition(":2,")[2])
        info = "".join(sorted(old | set(letters)))
        (self.inbox / name).rename(self.inbox / "cur" / f"{base}:2,{info}")

    def test_sync_flags_deletes_both_ways_then_idle(self):
        # ---- down: 50 messages into an empty Maildir, bytes unchanged
        sent = [self.msgs.message(i, to=self.user) for i in range(N_MESSAGES)]
        self.server.deliver_many(self.user, sent)
        self.offlineimap()
        local = self.local_by_id()
        self.assertEqual(len(local), N_MESSAGES, "every message synced down")
        for i, msg in enumerate(sent):
            mid = message_id(msg)
            self.assertIn(mid, local, f"message {i} {mid!r} missing from the Maildir")
            self.assertEqual(local[mid][1], msg, f"message {i} {mid!r} differs after sync down")
            self.assertEqual(maildir_flags(local[mid][0]), set(), f"message {i} arrived with flags")

        # ---- changes on both sides
        ids = [message_id(m) for m in sent]
        # local: seen 0..3, flagged 4..5, seen+answered 6; delete 10; a new message to upload
        for i in range(4):
            self.rename_with_flags(local[ids[i]][0], "S")
        for i in (4, 5):
            self.rename_with_flags(local[ids[i]][0], "F")
        self.rename_with_flags(local[ids[6]][0], "RS")
        (self.inbox / local[ids[10]][0]).unlink()
        up = self.msgs.message(1000, to=self.user)
        (self.inbox / "new" / "1764000000.e2e0.localhost").write_bytes(up.replace(b"\r\n", b"\n"))
        # server: flagged 20..21, seen 22, \Deleted+EXPUNGE 30, a new delivery
        m = self.server.imaps(self.user, self.pw)
        select(m)
        uid_of = {message_id(b): uid for uid, b in fetch_bodies(m).items()}
        check(m.uid("STORE", f"{uid_of[ids[20]]},{uid_of[ids[21]]}", "+FLAGS", "(\\Flagged)"), "STORE")
        check(m.uid("STORE", str(uid_of[ids[22]]), "+FLAGS", "(\\Seen)"), "STORE")
        check(m.uid("STORE", str(uid_of[ids[30]]), "+FLAGS", "(\\Deleted)"), "STORE")
        check(m.expunge(), "EXPUNGE")
        m.logout()
        down = self.msgs.message(1001, to=self.user)
        self.server.deliver_many(self.user, [down])

        # ---- resync: both sides converge
        self.offlineimap()
        expected_flags = {ids[i]: set() for i in range(N_MESSAGES)}
        for i in range(4):
            expected_flags[ids[i]] = {"\\Seen"}
        expected_flags[ids[4]] = expected_flags[ids[5]] = {"\\Flagged"}
        expected_flags[ids[6]] = {"\\Seen", "\\Answered"}
        expected_flags[ids[20]] = expected_flags[ids[21]] = {"\\Flagged"}
        expected_flags[ids[22]] = {"\\Seen"}
        del expected_flags[ids[10]], expected_flags[ids[30]]
        expected_flags[message_id(up)] = set()
        expected_flags[message_id(down)] = set()
        expected_bytes = {message_id(b): b for b in sent + [up, down]}

        srv = self.server_by_id()
        local = self.local_by_id()
        self.assertEqual(set(srv), set(expected_flags), "server holds the expected messages")
        self.assertEqual(set(local), set(expected_flags), "Maildir holds the expected messages")
        for mid, want in expected_flags.items():
            uid, flags, body = srv[mid]
            name, local_body = local[mid]
            self.assertEqual(flags, want, f"server flags of {mid!r}")
            self.assertEqual(maildir_flags(name), want, f"Maildir flags of {mid!r}")
            # Tandem offers UIDPLUS, so offlineimap appends the local message as it is (no
            # X-OfflineIMAP marker header) and takes its UID from APPENDUID.
            self.assertEqual(body, expected_bytes[mid], f"server bytes of {mid!r}")
            self.assertEqual(local_body, expected_bytes[mid], f"Maildir bytes of {mid!r}")
            self.assertEqual(maildir_uid(name), uid, f"the Maildir file of {mid!r} names its server UID")

        # ---- a third run with nothing changed transfers nothing
        local_before = {n: (b, (self.inbox / n).stat().st_mtime_ns) for n, b in self.local_files().items()}
        server_before = self.server_state()
        trace = self.offlineimap()
        local_after = {n: (b, (self.inbox / n).stat().st_mtime_ns) for n, b in self.local_files().items()}
        self.assertEqual(server_before, self.server_state(), "an idle sync changed the server")
        self.assertEqual(local_before, local_after, "an idle sync changed the Maildir")
        # imaplib2's `-d imap` trace logs every line it sends as `writer > b'TAG COMMAND...'`.
        # (This is also where to look for CONDSTORE/QRESYNC: offlineimap 8.0.0 sends
        # CAPABILITY, ID, LOGIN, LIST, SELECT, EXAMINE, `FETCH 1:* (FLAGS UID INTERNALDATE)`,
        # LOGOUT — no ENABLE, no CHANGEDSINCE.)
        sent_cmds = re.findall(r"writer > (b'.*)", trace)
        self.assertTrue(any("FETCH" in c for c in sent_cmds), f"expected offlineimap's -d imap trace:\n{trace[-2000:]}")
        for ln in sent_cmds:
            self.assertNotRegex(ln, r"\b(APPEND|STORE|EXPUNGE)\b", "an idle sync sent a write")
            self.assertNotRegex(ln, r"BODY(\.PEEK)?\[\]", "an idle sync fetched a message body")


if __name__ == "__main__":
    unittest.main()
