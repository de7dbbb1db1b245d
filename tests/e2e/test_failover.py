"""Failover through the cluster state (DESIGN "Cluster state and failover", invariants 6
and 9): `tandem fo SLOT --to`, `fo -a`, `fo -m`, `fo -K` under continuous LMTP delivery and
IMAP reading lose no acknowledged message and never reuse a UID, leave the replicas equal
to the master; a frozen (SIGSTOP) master acknowledges nothing after it wakes.

Every failover test runs on both cluster-state backends: `FailoverEmbeddedTest` (hosts share
an embedded state directory) and `FailoverEtcdTest` (a throwaway etcd on loopback, each
cluster under its own key prefix; skipped without an etcd binary unless
TANDEM_REQUIRE_ETCD=1). The tests read who masters s1 with `tandem cluster state --json`,
which works on either backend, and send their clients there."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import smtplib
import threading
import time
import unittest

from harness import DOMAIN, Cluster, Etcd, MessageFactory, etcd_missing, fetch_bodies, select, wait_until

SEED = int(os.environ.get("TANDEM_E2E_SEED", "6161"))
PW = "pw-Fo-1"


def slots(home: str, replicas: list[str]) -> str:
    reps = ", ".join(f'"{r}"' for r in replicas)
    return f'[slots.s1]\nhome = "{home}"\nreplicas = [{reps}]\n'


class StateCluster(Cluster):
    """A `Cluster` whose hosts follow one cluster state: an embedded state directory, or
    `state` (e.g. an `etcd://` spec) when given."""

    # How long a read of the state is reused: the load threads ask before every message.
    STATE_CACHE_S = 0.1

    def __init__(self, hosts: list[str], slots_toml: str, lease_ttl_ms: int = 2000,
                 state: str | None = None):
        super().__init__(hosts, slots_toml)
        self.state_spec = state or str(self.tmp / "state")
        for s in self.servers.values():
            s.extra_toml += f'state = "{self.state_spec}"\nlease_ttl_ms = {lease_ttl_ms}\n'
            s.write_config()
        self._cache: tuple[float, dict] = (0.0, {})
        self._cache_lock = threading.Lock()

    def state(self) -> dict:
        """The state as `tandem cluster state --json` prints it ({} when it cannot be read)."""
        for srv in self.servers.values():  # any host's config names the state; none need run
            try:
                r = srv.cli("cluster", "state", "--json", timeout=15)
            except Exception:
                continue
            if r.returncode == 0:
                try:
                    return json.loads(r.stdout)
                except ValueError:
                    return {}
        return {}

    def cached_state(self) -> dict:
        with self._cache_lock:
            at, st = self._cache
            if time.monotonic() - at < self.STATE_CACHE_S:
                return st
        st = self.state()
        with self._cache_lock:
            self._cache = (time.monotonic(), st)
        return st

    def master(self, slot: str = "s1", fresh: bool = True) -> tuple[str, int]:
        st = self.state() if fresh else self.cached_state()
        s = st.get("slots", {}).get(slot, {})
        return s.get("master", ""), s.get("epoch", 0)

    def fo(self, via: str, *args: str):
        return self.servers[via].cli("fo", *args, timeout=60)

    def serving(self, host: str) -> bool:
        """`host` masters s1 per its own status (its roles follow the state)."""
        try:
            return any(s["slot"] == "s1" and s["role"] == "master" and not s.get("fenced")
                       for s in self.status(host))
        except Exception:
            return False


def message_id(msg: bytes) -> bytes:
    mm = re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", msg)
    assert mm, msg[:200]
    return mm.group(1)


class FailoverTests:
    """The failover tests, run once per backend by the `unittest.TestCase` subclasses
    below: each names its backend with `cluster()` and how many clean switchovers the big
    test repeats (`ROUNDS`, ending on b)."""

    ROUNDS = ["c", "a", "c", "b"]

    def cluster(self, hosts: list[str], slots_toml: str) -> StateCluster:
        raise NotImplementedError

    def run_fo(self, c: StateCluster, via: str, *args: str) -> str:
        t = time.monotonic()
        r = c.fo(via, *args)
        if hasattr(c, "marks"):
            c.marks.append(f"{t - c.t0:.2f}-{time.monotonic() - c.t0:.2f} fo {' '.join(args)} -> {c.master()}")
        out = r.stdout.decode() + r.stderr.decode()
        self.assertEqual(r.returncode, 0, f"fo {' '.join(args)}: {out}")
        lines = out.strip().splitlines()
        self.assertLessEqual(len(lines), 10, out)
        self.assertTrue(all(len(l) <= 80 for l in lines), out)
        return out

    def test_repeated_failovers_under_load_lose_nothing_and_reuse_no_uid(self):
        factory = MessageFactory(seed=SEED)
        user = f"fo@{DOMAIN}"
        with self.cluster(["a", "b", "c"], slots("a", ["b", "c"])) as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20), c.status("a"))
            c.wait_synced("a")
            acked: dict[bytes, bytes] = {}
            seen_uids: dict[int, bytes] = {}
            problems: list[str] = []
            stop = threading.Event()
            paused = threading.Event()
            lock = threading.Lock()

            def deliverer() -> None:
                i = 0
                while not stop.is_set():
                    host, _ = c.master(fresh=False)
                    if paused.is_set() or host not in c.servers or not c.servers[host].running():
                        time.sleep(0.05)
                        continue
                    msg = factory.message(i, to=user)
                    i += 1
                    try:
                        with c[host].lmtp(timeout=10) as l:
                            r = l.transaction("sender@example.net", [user], msg)
                        if r.all_delivered():
                            with lock:
                                acked[message_id(msg)] = msg
                    except (OSError, smtplib.SMTPException):
                        time.sleep(0.05)

            def reader() -> None:
                while not stop.is_set():
                    host, _ = c.master(fresh=False)
                    try:
                        m = c[host].imaps(user, PW, timeout=10)
                        for _ in range(5):
                            select(m, "INBOX", readonly=True)
                            for uid, body in fetch_bodies(m).items():
                                mid = message_id(body)
                                with lock:
                                    if seen_uids.setdefault(uid, mid) != mid:
                                        problems.append(f"UID {uid} reused on {host} at {time.monotonic() - t0:.2f}s "
                                                        f"(state {c.master()}): {seen_uids[uid]!r} then {mid!r}")
                            time.sleep(0.1)
                        m.logout()
                    except Exception:
                        time.sleep(0.1)

            t0 = c.t0 = time.monotonic()
            marks = c.marks = []
            threads = [threading.Thread(target=deliverer), threading.Thread(target=reader)]
            for t in threads:
                t.start()
            try:
                def settle(host: str) -> None:
                    self.assertEqual(c.master()[0], host)
                    self.assertTrue(wait_until(lambda: c.serving(host), 20),
                                    f"{host} not serving: {c.state()}\n{marks}\n{c[host].log_tail(25)}\n"
                                    + str([(e["kind"], e.get("detail", "")[:120]) for e in c[host].events()[-12:]]))
                    time.sleep(0.5)  # some load on the new master

                time.sleep(0.5)
                out = self.run_fo(c, "a", "s1", "--to", "b", "--dry-run")
                self.assertIn("would s1: move a -> b", out)
                self.assertEqual(c.master()[0], "a", "dry run changed something")
                self.run_fo(c, "a", "s1", "--to", "b")
                settle("b")
                self.assertIn("nothing to do", self.run_fo(c, "a", "s1", "--to", "b"))
                for to in self.ROUNDS:  # repeated clean switchovers, any direction
                    self.run_fo(c, "b", "s1", "--to", to)
                    settle(to)
                self.run_fo(c, "c", "-a", "b")  # everything off b: to its first live copy
                settle("a")
                self.assertIn("nothing to do", self.run_fo(c, "c", "-a", "b"))
                self.run_fo(c, "a", "-a")  # everything off this host (a)
                settle("b")
                self.run_fo(c, "a", "-m")  # home is a: move it back
                settle("a")
                self.assertIn("nothing to do", self.run_fo(c, "a", "-m"))
                # SIGKILL mid-load: the dead master's last acknowledged writes may be on no
                # replica (async durability). The promoted copy skips a gap of UIDs, so no
                # UID a client saw on a names another message; a's tail comes back with
                # new UIDs when it rejoins below.
                c["a"].kill()
                self.run_fo(c, "b", "-K", "a")
                settle(c.master()[0])
                self.assertNotEqual(c.master()[0], "a")
                self.assertIn("nothing to do", self.run_fo(c, "b", "-K", "a"))
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            # a comes back as a replica of the new master and catches up.
            master = c.master()[0]
            c.start("a")
            c.wait_synced(master, timeout=60)
            m = c[master].imaps(user, PW)
            select(m, "INBOX", readonly=True)
            have = {message_id(b): (u, b) for u, b in fetch_bodies(m).items()}
            m.logout()
            if problems:
                for n in c.servers:
                    evs = [(e["ts"], e["kind"], e.get("detail", "")[:100]) for e in c[n].events()
                           if e.get("kind") in ("switchover_done", "switchover_undrained", "split_brain_reconcile",
                                                "split_brain_merge", "replica_ahead", "slot_fenced", "roles_changed",
                                                "stale_master_refused")]
                    print(n, evs)
                print(marks)
            self.assertFalse(problems, problems[:5])
            self.assertGreater(len(acked), 20, "too little load to mean anything")
            missing = [k for k in acked if k not in have]
            self.assertFalse(missing, f"{len(missing)} acknowledged messages lost")
            uids = [u for u, _ in have.values()]
            self.assertEqual(len(uids), len(set(uids)))
            for mid, (uid, _) in have.items():
                if uid in seen_uids:
                    self.assertEqual(seen_uids[uid], mid, f"UID {uid} names two messages")
            r = c.verify(master)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            for other in set(c.servers) - {master}:  # every replica compared, none differs
                self.assertIn(f"s1 vs {other}: ".encode(), r.stdout)
            if os.environ.get("FO_DEBUG"):
                print(f"acked {len(acked)}, stored {len(have)}, uids seen {len(seen_uids)}, "
                      f"master {c.master()}, verify: {r.stdout.decode().strip()}")
                for n in c.servers:
                    print(n, [e.get("detail", "")[-40:] for e in c[n].events() if e.get("kind", "").startswith("switchover")])
                print(marks)
            kinds = {e.get("kind") for e in c["b"].events()}
            self.assertIn("failover", kinds)
            # fo b, the rounds, -a b, -a, -m, -K: one epoch each, from epoch 1.
            self.assertEqual(c.master()[1], 1 + 1 + len(self.ROUNDS) + 4, "one epoch per promotion")

    def test_a_frozen_master_acknowledges_nothing_after_it_wakes(self):
        factory = MessageFactory(seed=SEED + 1)
        user = f"frozen@{DOMAIN}"
        with self.cluster(["a", "b"], slots("a", ["b"])) as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20))
            c.wait_synced("a")
            before = factory.message(0, to=user)
            self.assertTrue(c["a"].deliver(user, before).all_delivered())
            l = smtplib.LMTP(c["a"].listen["lmtp"].split(":")[0], c["a"].ports["lmtp"], timeout=10)
            l.ehlo("test")
            l.mail("sender@example.net")
            l.rcpt(user)
            os.kill(c["a"].pid, signal.SIGSTOP)
            try:
                out = self.run_fo(c, "b", "-K", "a")
                self.assertIn("promoted", out)
                self.assertTrue(wait_until(lambda: c.serving("b"), 20))
                self.assertTrue(c["b"].deliver(user, factory.message(1, to=user)).all_delivered())
            finally:
                os.kill(c["a"].pid, signal.SIGCONT)
            late = factory.message(2, to=user)
            try:
                code, _ = l.data(late)
            except (smtplib.SMTPException, OSError):
                code = 0  # disconnected: not acknowledged
            self.assertNotEqual(code, 250, "the old master acknowledged a write after waking")
            if os.environ.get("FO_DEBUG"):
                print("late DATA reply", code, c["a"].events()[-6:])
            try:
                code2 = 0 if not c["a"].deliver(user, factory.message(3, to=user)).all_delivered() else 250
            except (smtplib.SMTPException, OSError):
                code2 = 0
            self.assertNotEqual(code2, 250, "the old master took a new delivery")
            self.assertIn("nothing to do", self.run_fo(c, "b", "-K", "a"))

    def test_cluster_state_shows_slots_and_leases_but_no_accounts(self):
        user = f"state@{DOMAIN}"
        with self.cluster(["a", "b"], slots("a", ["b"])) as c:
            c.start("a")
            self.assertTrue(wait_until(lambda: c.serving("a"), 20))
            c.add_user(user, PW)
            st = c.state()
            self.assertEqual(st["slots"]["s1"], {"master": "a", "epoch": 1})
            self.assertTrue(st["hosts"]["a"]["alive"], st)
            self.assertNotIn("b", st["hosts"], "b never started")
            self.assertNotIn(user, json.dumps(st), "the account directory is not part of it")
            r = c["b"].cli("cluster", "state")  # any host's config reads it; b is not running
            out = r.stdout.decode()
            self.assertEqual(r.returncode, 0, out + r.stderr.decode())
            self.assertIn("slot s1 master a epoch 1", out)
            self.assertRegex(out, r"host a alive \(\d+ ms left\)")
            c["a"].stop()
            self.assertTrue(wait_until(lambda: not c.state()["hosts"]["a"]["alive"], 10, interval=0.2),
                            "a's lease outlived it")

    def test_srv_all_stop_and_start_are_idempotent(self):
        with self.cluster(["a", "b"], slots("a", ["b"])) as c:
            c.start("a")
            self.assertTrue(wait_until(lambda: c.serving("a"), 20))
            r = c["a"].cli("srv", "all", "status")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(b"masters: s1", r.stdout)
            self.assertIn(b"would stop", c["a"].cli("srv", "all", "stop", "-n").stdout)
            r = c["a"].cli("srv", "all", "stop")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertTrue(wait_until(lambda: not c["a"].running(), 10))
            self.assertIn(b"nothing to do", c["a"].cli("srv", "all", "stop").stdout)
            self.assertEqual(c["a"].cli("srv", "all", "status").returncode, 1)
            r = c["a"].cli("srv", "all", "start", timeout=90)
            try:
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn(b"nothing to do", c["a"].cli("srv", "all", "start").stdout)
                self.assertTrue(c.serving("a"))
            finally:
                self.assertEqual(c["a"].cli("srv", "all", "stop").returncode, 0)

    def test_fo_K_promotes_the_most_current_live_copy(self):
        """c comes first in config order but misses the dead master's last messages; b has
        them: `fo -K` must promote b, and c then catches up from b."""
        factory = MessageFactory(seed=SEED + 7)
        user = f"current@{DOMAIN}"
        with self.cluster(["a", "b", "c"], slots("a", ["c", "b"])) as c:
            c.start()
            c.add_user(user, PW)
            self.assertTrue(wait_until(lambda: c.serving("a"), 20), c.status("a"))
            c.wait_synced("a")
            c["c"].kill()
            msgs = [factory.message(i, to=user) for i in range(15)]
            c["a"].deliver_many(user, msgs)

            def b_has_everything() -> bool:
                try:
                    st = [s for s in c.status("a") if s["slot"] == "s1"][0]
                except Exception:
                    return False
                return any(r["host"] == "b" and r["connected"] and r["lag_changes"] == 0
                           and r["progress"] is None for r in st["replicas"])

            self.assertTrue(wait_until(b_has_everything, 30), c.status("a"))
            c["a"].kill()
            c.start("c")  # alive, but behind: its master is dead, nobody feeds it
            out = self.run_fo(c, "c", "-K", "a")
            self.assertIn("b promoted", out)
            self.assertIn("most current", out)
            self.assertEqual(c.master()[0], "b")
            self.assertTrue(wait_until(lambda: c.serving("b"), 20), c.status("b"))
            m = c["b"].imaps(user, PW)
            select(m, "INBOX", readonly=True)
            have = {message_id(b) for b in fetch_bodies(m).values()}
            m.logout()
            self.assertEqual(have, {message_id(x) for x in msgs})

            def c_caught_up() -> bool:
                try:
                    st = [s for s in c.status("b") if s["slot"] == "s1"][0]
                except Exception:
                    return False
                return any(r["host"] == "c" and r["connected"] and r["lag_changes"] == 0
                           and r["progress"] is None and r["last_sync_unix"] for r in st["replicas"])

            self.assertTrue(wait_until(c_caught_up, 60), c.status("b"))  # a still dead
            c.start("a")  # the old master rejoins as a replica
            c.wait_synced("b", timeout=60)
            r = c.verify("b")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_the_account_directory_lives_in_the_cluster_state(self):
        addr, new_pw = f"dir@{DOMAIN}", "pw-Dir-2"
        with self.cluster(["a", "b"], slots("a", ["b"])) as c:
            c.start()
            c.add_user(addr, PW)  # once, on a; the harness waits until b mirrored it
            self.assertTrue(wait_until(lambda: c.serving("a"), 20), c.status("a"))
            listed = c["b"].cli("user", "list")
            self.assertIn(f"{addr}  (slot s1)", listed.stdout.decode())
            again = c["b"].cli("user", "add", addr, "--password-stdin", input="x\n")
            self.assertNotEqual(again.returncode, 0)
            self.assertIn("already exists", again.stderr.decode())
            # A password changed on b is the one a checks, within a moment.
            r = c["b"].cli("user", "passwd", addr, "--password-stdin", input=new_pw + "\n")
            self.assertEqual(r.returncode, 0, r.stderr)

            def logs_in(pw: str) -> bool:
                try:
                    c["a"].imaps(addr, pw, timeout=5).logout()
                    return True
                except Exception:
                    return False

            self.assertTrue(wait_until(lambda: logs_in(new_pw), 10))
            self.assertFalse(logs_in(PW))
            # The data is deleted where the slot's master is; elsewhere it says where.
            r = c["b"].cli("user", "del", addr, "--purge")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("run this on a", r.stderr.decode())
            r = c["a"].cli("user", "del", addr, "--purge")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(wait_until(lambda: addr not in c["b"].cli("user", "list").stdout.decode(), 10))
            self.assertTrue(wait_until(
                lambda: addr not in (c["b"].data / "directory").read_text(errors="replace"), 10))

class FailoverEmbeddedTest(FailoverTests, unittest.TestCase):
    """The hosts share an embedded cluster state directory."""

    def cluster(self, hosts: list[str], slots_toml: str) -> StateCluster:
        return StateCluster(hosts, slots_toml)


class FailoverEtcdTest(FailoverTests, unittest.TestCase):
    """The hosts share one etcd (started for this class), each cluster under its own key
    prefix."""

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

    def cluster(self, hosts: list[str], slots_toml: str) -> StateCluster:
        assert self.etcd is not None
        prefix = f"tandem-test-{secrets.token_hex(4)}"
        return StateCluster(hosts, slots_toml, state=self.etcd.spec(prefix))

    def test_a_master_cut_off_from_etcd_acknowledges_nothing_until_it_is_back(self):
        factory = MessageFactory(seed=SEED + 2)
        user = f"cutoff@{DOMAIN}"

        def acked(i: int) -> bool:
            try:
                return c["a"].deliver(user, factory.message(i, to=user)).all_delivered()
            except (smtplib.SMTPException, OSError):
                return False

        with Etcd() as own:  # its own etcd: this test freezes it
            with StateCluster(["a", "b"], slots("a", ["b"]), state=own.spec("cutoff")) as c:
                c.start()
                c.add_user(user, PW)
                self.assertTrue(wait_until(lambda: c.serving("a"), 20))
                self.assertTrue(acked(0))
                os.kill(own.proc.pid, signal.SIGSTOP)  # etcd answers nothing now
                try:
                    time.sleep(2.0)  # the whole lease (2 s): a must have fenced itself
                    r = c["a"].deliver(user, factory.message(1, to=user))
                    self.assertFalse(r.all_delivered(), "a master cut off from etcd acknowledged a delivery")
                    # Refused for now (4xx: the sender retries), not rejected.
                    codes = [code for code, _ in list(r.rcpt.values()) + list(r.data.values())]
                    self.assertTrue(any(400 <= code < 500 for code in codes), (r.rcpt, r.data))
                finally:
                    os.kill(own.proc.pid, signal.SIGCONT)
                # etcd is back: a renews its lease and serves again, still at epoch 1.
                self.assertTrue(wait_until(lambda: acked(2), 20, interval=0.5), c["a"].log_tail(20))
                self.assertEqual(c.master(), ("a", 1))


class ClusterCheckTest(unittest.TestCase):
    def test_cluster_check_names_the_line_and_the_fix(self):
        with StateCluster(["a", "b"], slots("a", ["b"]) + '[slots.s2]\nhome = "zz"\n') as c:
            r = c["a"].cli("cluster", "check", str(c.config_path))
            out = r.stdout.decode()
            self.assertEqual(r.returncode, 1, out)
            self.assertRegex(out, r"cluster.toml:\d+ error: \[slots.s2\] names host \"zz\"")
            self.assertIn("fix: use one of", out)
            c.write_cluster(slots("a", ["b"]))
            r = c["a"].cli("cluster", "check")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("ok: 2 hosts in 2 datacentres, 1 slots", r.stdout.decode())


if __name__ == "__main__":
    unittest.main()
