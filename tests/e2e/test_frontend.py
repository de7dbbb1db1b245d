"""The frontend role (DESIGN "Roles and data flow", issue 6): a host whose cluster.toml
roles are ["frontend"] accepts IMAP, POP3 and LMTP, authenticates the user itself, and
proxies to the master of the user's slot over the store hosts' mutual-TLS proxy
listeners; it follows the cluster state, so after `tandem fo s1 --to b` new connections
reach b within a second and connections to the demoted master are closed.

Hosts a and b are store hosts (s1 homed on a, replicated to b), f is a frontend only (or a
is both); all follow one cluster state, embedded (`FrontendEmbeddedTest`) or etcd
(`FrontendEtcdTest`, skipped without an etcd binary unless TANDEM_REQUIRE_ETCD=1). Clients
talk only to the `[frontend]` listeners unless a test checks where data landed."""

from __future__ import annotations

import imaplib
import json
import poplib
import re
import secrets
import smtplib
import base64
import socket
import ssl
import time
import unittest

from harness import (DOMAIN, HOST, Cluster, Etcd, Lmtp, MessageFactory, crlf, fetch_bodies, free_port, port_accepts,
                     etcd_missing, imaps_connect, RawImap, select, unverified_context,
                     wait_until)

PW = "pw-Front-1"


class FrontendCluster(Cluster):
    """Store hosts `stores` with proxy listeners and one frontend host `fe` with
    `[frontend]` listeners (by default a, b store and f frontend only; `fe` may also be a
    store host). s1 is homed on `home`, replicated to the other store hosts. The hosts
    follow one embedded cluster state (read here from its file)."""

    def __init__(self, extra_toml: str = "", stores: tuple[str, ...] = ("a", "b"), fe: str = "f",
                 home: str = "a", state: str | None = None):
        self.stores, self.fe = stores, fe
        hosts = list(stores) + ([fe] if fe not in stores else [])
        self.proxy_addr = {h: f"127.0.0.{hosts.index(h) + 2}:{free_port()}" for h in stores}
        self.fe_ports = {k: free_port() for k in ("imap", "imaps", "pop3", "pop3s", "lmtp",
                                                  "submission", "submissions")}
        replicas = ", ".join(f'"{h}"' for h in stores if h != home)
        super().__init__(hosts, f'[slots.s1]\nhome = "{home}"\nreplicas = [{replicas}]\n')
        self.state_dir = self.tmp / "state"
        self.state_spec = state
        for name, s in self.servers.items():
            s.extra_toml += f'state = "{state or self.state_dir}"\nlease_ttl_ms = 2000\n' + extra_toml
            if name == fe:
                s.extra_toml += "[frontend]\n" + "".join(
                    f'{k} = "{HOST}:{p}"\n' for k, p in self.fe_ports.items())
            s.write_config()

    def write_cluster(self, slots_toml: str) -> None:
        lines = []
        for i, (h, addr) in enumerate(self.repl_addr.items()):
            lines += [f"[hosts.{h}]", f'datacentre = "dc{i % 2}"', f'replication = "{addr}"']
            if h in self.proxy_addr:
                lines.append(f'proxy = "{self.proxy_addr[h]}"')
            roles = (["store"] if h in self.stores else []) + (["frontend"] if h == self.fe else [])
            lines.append("roles = [" + ", ".join(f'"{r}"' for r in roles) + "]")
            lines.append("")
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n" + slots_toml + "\n")
        tmp.replace(self.config_path)

    def master(self, slot: str = "s1") -> str:
        """Who masters `slot` per the state: the embedded file read directly (no process
        start between the change and our seeing it), or `tandem cluster state --json`."""
        if self.state_spec is None:
            try:
                body = json.loads((self.state_dir / "state.json").read_text().split("\n")[1])
            except (OSError, IndexError, ValueError):
                return ""
        else:
            try:
                r = self.servers[self.fe].cli("cluster", "state", "--json", timeout=15)
                body = json.loads(r.stdout) if r.returncode == 0 else {}
            except Exception:
                return ""
        return body.get("slots", {}).get(slot, {}).get("master", "")

    def serving(self, host: str) -> bool:
        try:
            return any(s["slot"] == "s1" and s["role"] == "master" and not s.get("fenced")
                       for s in self.status(host))
        except Exception:
            return False

    # Clients of the frontend.
    def fe_imaps(self, user: str | None = None, password: str | None = None) -> imaplib.IMAP4_SSL:
        return imaps_connect(self.fe_ports["imaps"], user, password)

    def fe_imap_plain(self) -> imaplib.IMAP4:
        return imaplib.IMAP4(HOST, self.fe_ports["imap"], timeout=10)

    def fe_lmtp(self) -> Lmtp:
        return Lmtp(HOST, self.fe_ports["lmtp"], timeout=30)

    def fe_submit(self, user: str, password: str, msg: bytes) -> None:
        with smtplib.SMTP_SSL(HOST, self.fe_ports["submissions"], context=unverified_context(),
                              timeout=30) as smtp:
            smtp.login(user, password)
            smtp.sendmail(user, [user], msg)


def message_ids(m: imaplib.IMAP4) -> list[bytes]:
    return [mm.group(1) for b in fetch_bodies(m).values()
            for mm in [re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", b)] if mm]


def connection_closed(m: imaplib.IMAP4) -> bool:
    """True once the server has closed the connection (BYE, EOF or reset)."""
    try:
        m.noop()
        return False
    except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError, ssl.SSLError):
        return True


class FrontendTests:
    """Run on both cluster-state backends (the subclasses at the end)."""

    def cluster(self, **kw) -> FrontendCluster:
        return FrontendCluster(**kw)

    def test_frontend_proxies_imap_pop3_lmtp_and_follows_a_failover(self):
        factory = MessageFactory(seed=606)
        user = f"fe@{DOMAIN}"
        with self.cluster() as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20), c.status("a"))
            self.assertIn("frontend imaps", c["f"].log())
            out = c["f"].cli("status").stdout.decode()
            self.assertIn(f"frontend: imap {HOST}:{c.fe_ports['imap']}", out)
            self.assertIn(f"proxy (from frontends): {c.proxy_addr['a']}", c["a"].cli("status").stdout.decode())
            r = c["f"].cli("srv", "frontend", "status")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(b"running", r.stdout)
            r = c["a"].cli("srv", "frontend", "status")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(b'not "frontend"', r.stderr)

            # IMAP over the frontend: login, APPEND, SELECT, FETCH; the data is on a.
            m = c.fe_imaps(user, PW)
            msg1 = crlf(factory.message(1, to=user))
            typ, _ = m.append("INBOX", None, None, msg1)
            self.assertEqual(typ, "OK")
            self.assertEqual(select(m, "INBOX")["EXISTS"], 1)
            self.assertEqual(list(fetch_bodies(m).values()), [msg1])
            on_a = c["a"].imaps(user, PW)
            select(on_a, "INBOX", readonly=True)
            self.assertEqual(list(fetch_bodies(on_a).values()), [msg1])
            on_a.logout()

            # A wrong password is refused by the frontend itself.
            with self.assertRaises(imaplib.IMAP4.error):
                c.fe_imaps(user, "wrong-password")

            # Plaintext LOGIN is refused under the default TLS policy (require) ...
            p = c.fe_imap_plain()
            self.assertIn("LOGINDISABLED", p.capabilities)
            with self.assertRaisesRegex(imaplib.IMAP4.error, "PRIVACYREQUIRED"):
                p.login(user, PW)
            # ... and works after STARTTLS.
            p.starttls(ssl_context=unverified_context())
            p.login(user, PW)
            self.assertEqual(select(p, "INBOX", readonly=True)["EXISTS"], 1)
            p.logout()

            # LMTP over the frontend lands in the master.
            msg2 = crlf(factory.message(2, to=user))
            with c.fe_lmtp() as l:
                r = l.transaction("sender@example.net", [user, f"nobody@{DOMAIN}"], msg2)
            self.assertTrue(r.delivered(user), r)
            self.assertEqual(r.rcpt[f"nobody@{DOMAIN}"][0], 550, r)

            # Submission over the frontend: delivered into the master's copy.
            c.fe_submit(user, PW, crlf(factory.message(5, from_=user, to=user)))

            # POP3 over the frontend sees the three messages.
            pop = poplib.POP3_SSL(HOST, c.fe_ports["pop3s"], context=unverified_context(), timeout=10)
            pop.user(user)
            pop.pass_(PW)
            self.assertEqual(pop.stat()[0], 3)
            self.assertIn(factory.message_id(5).encode(), b"\r\n".join(pop.retr(3)[1]))
            self.assertEqual(b"\r\n".join(pop.retr(2)[1]) + b"\r\n", msg2)
            pop.quit()
            with self.assertRaises(poplib.error_proto):
                bad = poplib.POP3_SSL(HOST, c.fe_ports["pop3s"], context=unverified_context(), timeout=10)
                try:
                    bad.user(user)
                    bad.pass_("wrong-password")
                finally:
                    bad.close()

            # Failover: the open IMAP session (on a, through f) is closed; new logins
            # through f reach b within a second of b becoming master.
            select(m, "INBOX")
            c.wait_synced("a")
            r = c["a"].cli("fo", "s1", "--to", "b", timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertTrue(wait_until(lambda: c.master() == "b", 10), c.master())
            t_master = time.monotonic()
            self.assertTrue(wait_until(lambda: connection_closed(m), 15),
                            "the session through the frontend to the demoted master stayed open")
            try:
                m.shutdown()
            except OSError:
                pass
            # (the state file is read by polling, so t_master is late by up to one poll)
            reached = None
            deadline = t_master + 10
            while time.monotonic() < deadline:
                try:
                    n = c.fe_imaps(user, PW)
                    select(n, "INBOX", readonly=True)
                    n.logout()
                    reached = time.monotonic() - t_master
                    break
                except (imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError):
                    time.sleep(0.02)
            self.assertIsNotNone(reached, "no login through the frontend after the failover")
            self.assertLess(reached, 1.0, f"first login through the frontend took {reached:.2f}s")
            self.assertTrue(wait_until(lambda: c.serving("b"), 20))

            # Mail delivered over the frontend after the move is on b.
            msg3 = crlf(factory.message(3, to=user))
            ok = False
            deadline = time.monotonic() + 15
            while not ok and time.monotonic() < deadline:
                with c.fe_lmtp() as l:
                    ok = l.transaction("sender@example.net", [user], msg3).all_delivered()
                if not ok:
                    time.sleep(0.1)
            self.assertTrue(ok, "LMTP through the frontend after the failover")
            on_b = c["b"].imaps(user, PW)
            select(on_b, "INBOX", readonly=True)
            self.assertIn(msg3, list(fetch_bodies(on_b).values()))
            on_b.logout()
            # Submission through f after the move lands on b too.
            c.fe_submit(user, PW, crlf(factory.message(6, from_=user, to=user)))
            on_b = c["b"].imaps(user, PW)
            select(on_b, "INBOX", readonly=True)
            self.assertIn(factory.message_id(6).encode(), message_ids(on_b))
            on_b.logout()
            # And a session through f now works on b: APPEND shows up there.
            n = c.fe_imaps(user, PW)
            msg4 = crlf(factory.message(4, to=user))
            self.assertEqual(n.append("INBOX", None, None, msg4)[0], "OK")
            n.logout()
            on_b = c["b"].imaps(user, PW)
            select(on_b, "INBOX", readonly=True)
            self.assertIn(msg4, list(fetch_bodies(on_b).values()))
            on_b.logout()

    def test_insecure_login_through_the_frontend_is_recorded_by_the_master(self):
        """Under tls = "allow" the frontend lets a plaintext LOGIN through; the master
        records it in the user's slot with the client's ID, as for a direct login."""
        user = f"plain@{DOMAIN}"
        allow = '[tls_policy.imap]\ntls = "allow"\n[tls_policy.submission]\ntls = "allow"\n'
        with self.cluster(extra_toml=allow) as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20))
            p = c.fe_imap_plain()
            self.assertNotIn("LOGINDISABLED", p.capabilities)
            p.logout()
            with RawImap(HOST, c.fe_ports["imap"], tls=False) as r:
                r.command('ID ("name" "OldMail" "version" "1.0")')
                r.login(user, PW)
                r.command("SELECT INBOX")
                r.command("LOGOUT")

            def reported() -> str:
                out = c["a"].cli("report", "insecure-clients").stdout.decode()
                return out if user in out else ""

            out = wait_until(reported, 10)
            self.assertTrue(out, c["a"].cli("report", "insecure-clients").stdout)
            self.assertIn("name=OldMail", out)
            self.assertIn("127.0.0.1", out)
            # Submission: the frontend authenticates; the master records it.
            sm = smtplib.SMTP(HOST, c.fe_ports["submission"], local_hostname="old.e2e.test", timeout=10)
            sm.ehlo()
            cred = base64.b64encode(f"\0{user}\0{PW}".encode()).decode()
            code, text = sm.docmd("AUTH", f"PLAIN {cred}")
            self.assertEqual(code, 235, text)
            sm.quit()

            def reported_submission() -> bool:
                out = c["a"].cli("report", "insecure-clients").stdout.decode()
                return any(user in l and "submission" in l for l in out.splitlines())

            self.assertTrue(wait_until(reported_submission, 10),
                            c["a"].cli("report", "insecure-clients").stdout.decode()
                            + c["f"].log_tail(10))

    def test_proxy_listener_speaks_the_header_protocol_to_frontends_only(self):
        """The store side, driven by hand: only a frontend host's certificate is accepted;
        the master answers OK and starts a pre-authenticated session, a copy that is not
        the master answers MOVED, a malformed header gets ERR."""
        user = f"px@{DOMAIN}"
        with self.cluster() as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20))
            for h in "ab":
                host, port = c.proxy_addr[h].split(":")
                self.assertTrue(wait_until(lambda: port_accepts(int(port), host), 10))

            def talk(to: str, cert_of: str | None, line: bytes, want: int = 1) -> bytes:
                host, port = c.proxy_addr[to].split(":")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.load_verify_locations(c["a"].data / "cluster" / "ca.pem")
                if cert_of:
                    d = c[cert_of].data / "cluster"
                    ctx.load_cert_chain(d / f"{cert_of}.pem", d / f"{cert_of}-key.pem")
                out = b""
                try:
                    with socket.create_connection((host, int(port)), timeout=10) as raw:
                        with ctx.wrap_socket(raw, server_hostname=to) as s:
                            s.sendall(line)
                            while out.count(b"\n") < want:
                                chunk = s.recv(4096)
                                if not chunk:
                                    break
                                out += chunk
                except (ssl.SSLError, OSError):
                    pass
                return out

            header = f"TANDEM-PROXY 1 imap {user} 192.0.2.9 yes name=x\r\n".encode()
            self.assertEqual(talk("a", None, header), b"", "no client certificate")
            self.assertEqual(talk("a", "b", header), b"", "a store host's certificate")
            self.assertEqual(talk("b", "f", header), b"MOVED -\r\n")
            got = talk("a", "f", header, want=2)
            self.assertTrue(got.startswith(b"OK\r\n* PREAUTH [CAPABILITY "), got)
            got = talk("a", "f", b"TANDEM-PROXY 2 imap x 1.2.3.4 yes -\r\n")
            self.assertTrue(got.startswith(b"ERR bad proxy header: unsupported"), got)
            pop = f"TANDEM-PROXY 1 pop3 {user} 192.0.2.9 no -\r\n".encode()
            got = talk("a", "f", pop, want=2)
            self.assertTrue(got.startswith(b"OK\r\n+OK Logged in; 0 messages"), got)


    def test_a_store_host_can_also_be_the_frontend(self):
        """a is store and frontend, s1 homed on b: a's frontend proxies to b, and after
        `fo s1 --to a` (a re-executes to take the slot) to a's own proxy listener."""
        user = f"both@{DOMAIN}"
        factory = MessageFactory(seed=707)
        with self.cluster(stores=("a", "b"), fe="a", home="b") as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("b"), 20))
            m = c.fe_imaps(user, PW)
            msg1 = crlf(factory.message(1, to=user))
            self.assertEqual(m.append("INBOX", None, None, msg1)[0], "OK")
            m.logout()
            on_b = c["b"].imaps(user, PW)
            select(on_b, "INBOX", readonly=True)
            self.assertEqual(list(fetch_bodies(on_b).values()), [msg1])
            on_b.logout()
            c.wait_synced("b")
            r = c["b"].cli("fo", "s1", "--to", "a", timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20))
            msg2 = crlf(factory.message(2, to=user))

            def append_through_frontend() -> bool:
                try:
                    n = c.fe_imaps(user, PW)
                    ok = n.append("INBOX", None, None, msg2)[0] == "OK"
                    n.logout()
                    return ok
                except (imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError):
                    return False

            self.assertTrue(wait_until(append_through_frontend, 15))
            on_a = c["a"].imaps(user, PW)
            select(on_a, "INBOX", readonly=True)
            self.assertEqual(sorted(fetch_bodies(on_a).values()), sorted([msg1, msg2]))
            on_a.logout()


class FrontendEmbeddedTest(FrontendTests, unittest.TestCase):
    """The hosts share an embedded state directory."""


class FrontendEtcdTest(FrontendTests, unittest.TestCase):
    """The hosts share one etcd (started for this class), each cluster under its own key
    prefix; skipped without an etcd binary unless TANDEM_REQUIRE_ETCD=1."""

    etcd: Etcd | None = None

    @classmethod
    def setUpClass(cls):
        why = etcd_missing()
        if why:
            raise unittest.SkipTest(why)
        cls.etcd = Etcd()

    @classmethod
    def tearDownClass(cls):
        if cls.etcd is not None:
            cls.etcd.close()
            cls.etcd = None

    def cluster(self, **kw) -> FrontendCluster:
        assert self.etcd is not None
        return FrontendCluster(state=self.etcd.spec(f"tandem-fe-{secrets.token_hex(4)}"), **kw)


if __name__ == "__main__":
    unittest.main()
