"""TLS policy (issue 9) against the real binary: insecure logins are recorded, notify sends
one notice per window into INBOX, require refuses plaintext passwords with the standard
codes (set directly and reached through require_after), the /help/tls page shows the
configured ports to curl and headless Chromium, and the records survive a restart and
appear in `tandem report insecure-clients`.

Time is stepped with `[testing] clock_offset_secs` (test-only) and a restart."""

from __future__ import annotations

import base64
import calendar
import email
import poplib
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

from harness import (
    DOMAIN,
    HOST,
    IO_TIMEOUT_S,
    RawImap,
    Server,
    fetch_bodies,
    free_port,
    select,
    unverified_context,
    wait_until,
)

CHROMIUM = shutil.which("chromium")
CURL = shutil.which("curl")
DAY = 86_400


def policy_toml(mode: str, require_after: str | None = None, offset: int = 0) -> str:
    lines = []
    for proto in ("imap", "pop3", "submission"):
        lines.append(f"[tls_policy.{proto}]")
        lines.append(f'tls = "{mode}"')
        if require_after:
            lines.append(f'require_after = "{require_after}"')
    lines.append("[testing]")
    lines.append(f"clock_offset_secs = {offset}")
    return "\n".join(lines)


def reconfigure(server: Server, toml: str) -> None:
    server.extra_toml = toml
    server.write_config()
    server.restart()


def insecure_imap_login(server: Server, user: str, password: str, client: str = "OldMail") -> None:
    with RawImap(HOST, server.ports["imap"], tls=False) as c:
        c.command(f'ID ("name" "{client}" "version" "1.0")')
        c.login(user, password)
        c.command("LOGOUT")


def inbox(server: Server, user: str, password: str) -> dict[int, bytes]:
    m = server.imaps(user, password)
    try:
        select(m, "INBOX", readonly=True)
        return fetch_bodies(m)
    finally:
        m.logout()


def notices(server: Server, user: str, password: str) -> list[email.message.Message]:
    msgs = [email.message_from_bytes(b) for b in inbox(server, user, password).values()]
    return [m for m in msgs if "unencrypted" in (m["Subject"] or "")]


class NotifyTest(unittest.TestCase):
    def test_one_notice_per_window_only_for_insecure_logins_and_records_survive(self):
        with Server(extra_toml=policy_toml("notify", "2099-06-30")) as s:
            user, pw = f"carol@{DOMAIN}", "pw-Carol-1"
            s.add_user(user, pw)
            insecure_imap_login(s, user, pw)
            self.assertTrue(wait_until(lambda: len(notices(s, user, pw)) == 1, 10),
                            "no notice after an insecure login")
            n = notices(s, user, pw)[0]
            body = n.get_payload(decode=True).decode()
            self.assertIn("IMAP", body)
            self.assertIn("name=OldMail version=1.0", body)
            self.assertIn("2099-06-30", body)
            for key in ("imaps", "imap", "pop3s", "submission", "submissions"):
                self.assertIn(f"port {s.ports[key]}", body, key)
            self.assertIn(f"/help/tls", body)
            self.assertEqual(n["To"], f"<{user}>")

            # Inside the window: recorded, but no second notice.
            insecure_imap_login(s, user, pw)
            # TLS logins never produce one.
            m = s.imap_starttls(user, pw)
            m.logout()
            s.imaps(user, pw).logout()
            time.sleep(1.0)
            self.assertEqual(len(notices(s, user, pw)), 1)

            # A user who only uses TLS is never recorded or notified.
            good, gpw = f"dave@{DOMAIN}", "pw-Dave-1"
            s.add_user(good, gpw)
            s.imaps(good, gpw).logout()

            # After the window (clock stepped by a restart): the next notice.
            reconfigure(s, policy_toml("notify", "2099-06-30", offset=DAY + 60))
            self.assertEqual(len(notices(s, user, pw)), 1, "a restart sends nothing")
            insecure_imap_login(s, user, pw)
            self.assertTrue(wait_until(lambda: len(notices(s, user, pw)) == 2, 10),
                            "no second notice after the window")

            # The records survived the restart and appear in the report (online, then
            # offline with the server stopped).
            r = s.cli("report", "insecure-clients")
            self.assertEqual(r.returncode, 0, r.stderr)
            out = r.stdout.decode()
            self.assertIn(user, out)
            self.assertIn("imap", out)
            self.assertIn("logins 3", out)
            self.assertIn("name=OldMail", out)
            self.assertNotIn(good, out)
            s.stop()
            r = s.cli("report", "insecure-clients", "--since", "7")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(user, r.stdout.decode())
            s.start()


def assert_plaintext_refused(tc: unittest.TestCase, s: Server, user: str, pw: str) -> None:
    with RawImap(HOST, s.ports["imap"], tls=False) as c:
        tc.assertIn(b"LOGINDISABLED", c.greeting)
        _, tagged, _ = c.command(f'LOGIN "{user}" "{pw}"')
        tc.assertIn(b"NO [PRIVACYREQUIRED]", tagged)
        tc.assertIn(b"/help/tls", tagged)
        cred = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
        _, tagged, _ = c.command(f"AUTHENTICATE PLAIN {cred}")
        tc.assertIn(b"NO [PRIVACYREQUIRED]", tagged)
    p = poplib.POP3(HOST, s.ports["pop3"], timeout=IO_TIMEOUT_S)
    with tc.assertRaises(poplib.error_proto) as e:
        p.user(user)
    tc.assertIn(b"-ERR [AUTH]", e.exception.args[0])
    tc.assertIn(b"/help/tls", e.exception.args[0])
    p.quit()
    sm = smtplib.SMTP(HOST, s.ports["submission"], local_hostname="laptop.e2e.test", timeout=IO_TIMEOUT_S)
    sm.ehlo()
    cred = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    code, text = sm.docmd("AUTH", f"PLAIN {cred}")
    tc.assertEqual(code, 530)
    tc.assertTrue(text.startswith(b"5.7.0 Must issue a STARTTLS command first"), text)
    sm.quit()


def assert_tls_logins_work(tc: unittest.TestCase, s: Server, user: str, pw: str) -> None:
    s.imaps(user, pw).logout()
    s.imap_starttls(user, pw).logout()
    p = poplib.POP3_SSL(HOST, s.ports["pop3s"], context=unverified_context(), timeout=IO_TIMEOUT_S)
    p.user(user)
    p.pass_(pw)
    p.quit()
    sm = smtplib.SMTP_SSL(HOST, s.ports["submissions"], context=unverified_context(),
                          local_hostname="laptop.e2e.test", timeout=IO_TIMEOUT_S)
    sm.login(user, pw)
    sm.quit()
    sm = smtplib.SMTP(HOST, s.ports["submission"], local_hostname="laptop.e2e.test", timeout=IO_TIMEOUT_S)
    sm.starttls(context=unverified_context())
    sm.login(user, pw)
    sm.quit()


def assert_plaintext_accepted(tc: unittest.TestCase, s: Server, user: str, pw: str) -> None:
    insecure_imap_login(s, user, pw)
    p = poplib.POP3(HOST, s.ports["pop3"], timeout=IO_TIMEOUT_S)
    p.user(user)
    p.pass_(pw)
    p.quit()
    sm = smtplib.SMTP(HOST, s.ports["submission"], local_hostname="laptop.e2e.test", timeout=IO_TIMEOUT_S)
    sm.login(user, pw)
    sm.quit()


class RequireTest(unittest.TestCase):
    def test_require_set_directly_refuses_plaintext_on_every_protocol(self):
        with Server(extra_toml=policy_toml("require")) as s:
            user, pw = f"erin@{DOMAIN}", "pw-Erin-1"
            s.add_user(user, pw)
            assert_plaintext_refused(self, s, user, pw)
            assert_tls_logins_work(self, s, user, pw)

    def test_notify_turns_into_require_on_the_cutoff_date(self):
        cutoff = "2030-01-01"
        with Server(extra_toml=policy_toml("notify", cutoff)) as s:
            user, pw = f"frank@{DOMAIN}", "pw-Frank-1"
            s.add_user(user, pw)
            assert_plaintext_accepted(self, s, user, pw)
            # Each protocol was recorded.
            out = wait_until(lambda: s.cli("report", "insecure-clients").stdout.decode().count(user) == 3, 10)
            self.assertTrue(out, s.cli("report", "insecure-clients").stdout)
            past = calendar.timegm(time.strptime(cutoff, "%Y-%m-%d")) - int(time.time()) + 60
            reconfigure(s, policy_toml("notify", cutoff, offset=past))
            assert_plaintext_refused(self, s, user, pw)
            assert_tls_logins_work(self, s, user, pw)


def curl(url: str) -> str:
    r = subprocess.run([CURL, "-sS", "--max-time", "10", url], capture_output=True, timeout=20)
    if r.returncode != 0:
        raise AssertionError(f"curl {url}: {r.stderr.decode()}")
    return r.stdout.decode()


def chromium_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"chromium {url}: {r.stderr.decode()[-2000:]}")
    return r.stdout.decode()


def port_cell(port: int) -> str:
    return f'<td class="port">{port}</td>'


class HelpPageTest(unittest.TestCase):
    @unittest.skipUnless(CURL, "curl is not installed (scripts/test installs it)")
    def test_help_page_shows_the_configured_ports_and_follows_the_configuration(self):
        with Server(extra_toml=policy_toml("notify", "2099-06-30")) as s:
            url = f"http://{HOST}:{s.ports['http']}/help/tls"
            html = curl(url)
            for key in ("imaps", "imap", "pop3s", "pop3", "submissions", "submission"):
                self.assertIn(port_cell(s.ports[key]), html, key)
            self.assertIn("STARTTLS", html)
            self.assertIn("2099-06-30", html)
            # The same page over https.
            r = subprocess.run([CURL, "-sSk", "--max-time", "10",
                                f"https://{HOST}:{s.ports['https']}/help/tls"],
                               capture_output=True, timeout=20)
            self.assertIn(port_cell(s.ports["imaps"]), r.stdout.decode())
            if CHROMIUM:
                dom = chromium_dom(url)
                self.assertIn(port_cell(s.ports["imaps"]), dom)
                self.assertIn("SSL, TLS and STARTTLS", dom)

            # Move IMAPS to another port: the page follows.
            new = free_port()
            s.ports["imaps"] = new
            s.listen["imaps"] = f"{HOST}:{new}"
            reconfigure(s, policy_toml("require"))
            html = curl(url)
            self.assertIn(port_cell(new), html)
            self.assertIn("encryption required", html)
            if CHROMIUM:
                self.assertIn(port_cell(new), chromium_dom(url))


if __name__ == "__main__":
    unittest.main()
