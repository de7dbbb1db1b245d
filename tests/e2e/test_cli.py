"""The `tandem` command line as an operator uses it."""

from __future__ import annotations

import imaplib
import re
import socket
import subprocess
import time
import unittest

from harness import (
    DOMAIN,
    HOST,
    MessageFactory,
    Server,
    fetch_bodies,
    free_port,
    select,
    tandem_bin,
)


def run(*args: str, input: bytes = b"", timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([tandem_bin(), *args], input=input, capture_output=True, timeout=timeout)


def subcommands(help_text: str) -> list[str]:
    """Command names from clap's `Commands:` section."""
    out, inside = [], False
    for line in help_text.splitlines():
        if line.strip() == "Commands:":
            inside = True
            continue
        if inside:
            if not line.startswith("  "):
                break
            mm = re.match(r"^  (\S+)", line)
            if mm and mm.group(1) != "help":
                out.append(mm.group(1).rstrip(","))
    return out


def err(r: subprocess.CompletedProcess) -> str:
    return r.stderr.decode(errors="replace").strip()


class HelpTest(unittest.TestCase):
    def test_help_of_every_command_exits_zero(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0, err(r))
        top = subcommands(r.stdout.decode())
        for expected in ("serve", "user", "events"):
            self.assertIn(expected, top, f"`tandem --help` lists {expected}")
        seen = []
        todo = [[c] for c in top]
        while todo:
            path = todo.pop(0)
            r = run(*path, "--help")
            self.assertEqual(r.returncode, 0, f"tandem {' '.join(path)} --help: {err(r)}")
            self.assertTrue(r.stdout.strip(), f"tandem {' '.join(path)} --help printed nothing")
            seen.append(" ".join(path))
            todo += [path + [c] for c in subcommands(r.stdout.decode())]
        for expected in ("user add", "user list", "user passwd", "user del"):
            self.assertIn(expected, seen)

    def test_unknown_command_fails(self):
        r = run("no-such-command")
        self.assertNotEqual(r.returncode, 0)
        self.assertTrue(err(r))


class UserCliTest(unittest.TestCase):
    msgs = MessageFactory(seed=202)

    def server(self, **kw) -> Server:
        s = Server(**kw)
        self.addCleanup(s.close)
        return s

    def login_fails(self, s: Server, user: str, pw: str) -> bool:
        try:
            m = s.imaps(user, pw)
        except imaplib.IMAP4.error:
            return True
        m.logout()
        return False

    def user_list(self, s: Server) -> str:
        r = s.cli("user", "list")
        self.assertEqual(r.returncode, 0, err(r))
        return r.stdout.decode()

    def listed(self, s: Server, user: str) -> bool:
        return re.search(r"(^|\s)" + re.escape(user) + r"(\s|$)", self.user_list(s)) is not None

    def test_user_lifecycle_while_server_runs(self):
        s = self.server()
        user = f"carol@{DOMAIN}"
        s.add_user(user, "first-pw")
        self.assertTrue(self.listed(s, user))
        s.imaps(user, "first-pw").logout()

        r = s.cli("user", "passwd", user, "--password-stdin", input="second-pw\n")
        self.assertEqual(r.returncode, 0, err(r))
        self.assertTrue(self.login_fails(s, user, "first-pw"), "the old password must stop working")
        m = s.imaps(user, "second-pw")
        m.logout()

        msg = self.msgs.message(1, to=user)
        self.assertTrue(s.deliver(user, msg).all_delivered())
        r = s.cli("user", "del", user)
        self.assertNotEqual(r.returncode, 0, "del must refuse while the user has mail")
        self.assertTrue(err(r), "a refusal says why on stderr")
        self.assertIn("purge", err(r).lower(), f"the refusal should name --purge: {err(r)}")
        self.assertTrue(self.listed(s, user))
        m = s.imaps(user, "second-pw")
        select(m)
        self.assertEqual(list(fetch_bodies(m).values()), [msg], "a refused del leaves the mail alone")
        m.logout()

        r = s.cli("user", "del", user, "--purge")
        self.assertEqual(r.returncode, 0, err(r))
        self.assertFalse(self.listed(s, user))
        self.assertTrue(self.login_fails(s, user, "second-pw"))
        res = s.deliver(user, msg)
        self.assertEqual(res.rcpt[user][0], 550, f"deleted user at RCPT: {res.rcpt}")

        # The address can be reused and starts empty: the purge really removed the mail.
        s.add_user(user, "third-pw")
        m = s.imaps(user, "third-pw")
        self.assertEqual(select(m)["EXISTS"], 0)
        m.logout()
        self.assertTrue(s.running())

    def test_user_lifecycle_while_server_stopped(self):
        s = self.server()
        a, b, c = (f"{n}@{DOMAIN}" for n in ("dora", "ed", "flo"))
        s.add_user(a, "pw-a")
        s.add_user(b, "pw-b")
        msg = self.msgs.message(2, to=a)
        self.assertTrue(s.deliver(a, msg).all_delivered())
        self.assertEqual(s.stop(), 0)

        s.add_user(c, "pw-c")
        out = self.user_list(s)
        for u in (a, b, c):
            self.assertIn(u, out)
        r = s.cli("user", "passwd", b, "--password-stdin", input="pw-b2\n")
        self.assertEqual(r.returncode, 0, err(r))
        r = s.cli("user", "del", a)
        self.assertNotEqual(r.returncode, 0, "del must refuse while the user has mail (server stopped)")
        self.assertTrue(err(r))
        r = s.cli("user", "del", c)
        self.assertEqual(r.returncode, 0, f"del of a user without mail: {err(r)}")
        r = s.cli("user", "del", a, "--purge")
        self.assertEqual(r.returncode, 0, err(r))
        out = self.user_list(s)
        self.assertNotIn(a, out)
        self.assertNotIn(c, out)
        self.assertIn(b, out)

        s.start()
        self.assertTrue(self.login_fails(s, a, "pw-a"))
        self.assertTrue(self.login_fails(s, b, "pw-b"), "passwd while stopped must take effect")
        s.imaps(b, "pw-b2").logout()
        self.assertEqual(s.deliver(a, msg).rcpt[a][0], 550)

    def test_del_without_mail_needs_no_purge(self):
        s = self.server()
        user = f"gus@{DOMAIN}"
        s.add_user(user, "pw")
        r = s.cli("user", "del", user)
        self.assertEqual(r.returncode, 0, err(r))
        self.assertFalse(self.listed(s, user))

    def test_duplicate_and_unknown_users_fail(self):
        s = self.server(start=False)
        s.add_user(f"hal@{DOMAIN}", "pw")
        r = s.cli("user", "add", f"hal@{DOMAIN}", "--password-stdin", input="pw2\n")
        self.assertNotEqual(r.returncode, 0, "adding a duplicate must fail")
        self.assertTrue(err(r), "and say why")
        r = s.cli("user", "add", f"HAL@{DOMAIN.upper()}", "--password-stdin", input="pw2\n")
        self.assertNotEqual(r.returncode, 0, "addresses compare case-insensitively")
        self.assertEqual(self.user_list(s).count(f"hal@{DOMAIN}"), 1)
        for args in (("user", "del", f"nobody@{DOMAIN}"),
                     ("user", "passwd", f"nobody@{DOMAIN}", "--password-stdin")):
            r = s.cli(*args, input="pw\n")
            self.assertNotEqual(r.returncode, 0, f"tandem {' '.join(args)} on an unknown user")
            self.assertTrue(err(r))
        r = s.cli("user", "add", "not-an-address", "--password-stdin", input="pw\n")
        self.assertNotEqual(r.returncode, 0, "an invalid address is refused")


class ServeCliTest(unittest.TestCase):
    def test_serve_prints_where_it_listens_and_stops_cleanly(self):
        with Server() as s:
            ok = lambda: all(str(p) in s.log() for p in s.ports.values())  # noqa: E731
            deadline = time.monotonic() + 5
            while not ok() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(ok(), f"serve should print its listen addresses:\n{s.log()}")
            for f in (s.config_path, s.cert_path, s.data / "tls" / "key.pem", s.slot_dir, s.data / "admin.sock"):
                self.assertTrue(f.exists(), f"{f} after first start")
            self.assertEqual(s.stop(), 0, f"SIGTERM is a clean shutdown:\n{s.log_tail()}")

    def _serve_fails_naming(self, key: str):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind((HOST, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        try:
            with Server(start=False, listen={key: f"{HOST}:{port}"}) as s:
                s.ports.pop(key)
                p = s.spawn()
                try:
                    rc = p.wait(20)
                except subprocess.TimeoutExpired:
                    self.fail(f"serve kept running although [listen] {key} cannot be bound:\n{s.log_tail()}")
                self.assertNotEqual(rc, 0, f"serve must exit non-zero:\n{s.log()}")
                self.assertRegex(s.log(), rf"\b{key}\b", f"the message should name {key}")
                self.assertIn(str(port), s.log())
        finally:
            holder.close()

    def test_imap_address_in_use_fails_naming_imap(self):
        self._serve_fails_naming("imap")

    def test_lmtp_address_in_use_fails_naming_lmtp(self):
        self._serve_fails_naming("lmtp")

    def test_bad_listen_address_fails(self):
        with Server(start=False, listen={"imap": "not-an-address"}) as s:
            p = s.spawn()
            rc = p.wait(20)
            self.assertNotEqual(rc, 0)
            self.assertRegex(s.log(), r"\bimap\b")

    def test_second_server_on_same_data_dir_is_refused(self):
        with Server() as s:
            other_ports = {"imap": free_port(), "imaps": free_port(), "lmtp": free_port()}
            # Same data dir, other ports: the admin socket / slot lock must refuse it.
            s.listen = {k: f"{HOST}:{p}" for k, p in other_ports.items()}
            s.write_config()
            try:
                r = subprocess.run([tandem_bin(), "--data", str(s.data), "serve"],
                                   capture_output=True, timeout=20)
            except subprocess.TimeoutExpired:
                self.fail("a second `serve` on a data dir in use kept running")
            self.assertNotEqual(r.returncode, 0, "two servers must not share one data dir")
            self.assertTrue(s.running(), "the first server keeps running")

    def test_events_prints_events(self):
        with Server() as s:
            self.assertEqual(s.stop(), 0)
            evs = s.events()
            self.assertTrue(evs, "start and stop should leave events in events.jsonl")
            for e in evs:
                for k in ("ts", "level", "kind", "detail"):
                    self.assertIn(k, e, f"event without {k}: {e}")
                self.assertIn(e["level"], ("alert", "info"))
            r = s.cli("events")
            self.assertEqual(r.returncode, 0, err(r))
            out = r.stdout.decode()
            self.assertGreaterEqual(len(out.strip().splitlines()), len(evs))
            for e in evs:
                self.assertIn(e["kind"], out)
        with Server(start=False) as s:
            r = s.cli("events")
            self.assertEqual(r.returncode, 0, f"no events yet is not an error: {err(r)}")


if __name__ == "__main__":
    unittest.main()
