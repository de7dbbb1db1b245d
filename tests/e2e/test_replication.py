"""Replication between real `tandem serve` processes on one machine (DESIGN "Replication",
invariants 1, 3, 5, 6): synchronous durability under SIGKILL, corruption that never
travels and is repaired from the replica, catch-up and bootstrap, split-brain reconcile.

Each host has its own data directory and its own loopback address for replication
(127.0.0.2, 127.0.0.3, ...); see `harness.Cluster`."""

from __future__ import annotations

import os
import random
import re
import smtplib
import threading
import time
import unittest

from harness import DOMAIN, Cluster, MessageFactory, fetch_bodies, select

SEED = int(os.environ.get("TANDEM_E2E_SEED", "5151"))
PW = "pw-Repl-1"


def message_id(msg: bytes) -> bytes:
    mm = re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", msg)
    assert mm, msg[:200]
    return mm.group(1)


def slots(master: str, replicas: list[str], epoch: int = 1, extra: str = "") -> str:
    reps = ", ".join(f'"{r}"' for r in replicas)
    return f'[slots.s1]\nmaster = "{master}"\nreplicas = [{reps}]\nepoch = {epoch}\n{extra}'


def start_with_mail(c: Cluster, user: str, msgs: list[bytes], master: str = "a") -> None:
    """Starts every host, adds `user` everywhere, delivers `msgs` to `master`, waits until
    its replicas have them."""
    c.start()
    c.add_user(user, PW)
    c[master].deliver_many(user, msgs)
    c.wait_synced(master)


def mailbox_by_id(m, mailbox: str = "INBOX") -> tuple[int, dict[bytes, tuple[int, bytes]]]:
    """(UIDVALIDITY, Message-ID → (uid, bytes)) of a mailbox, read over IMAP."""
    info = select(m, mailbox, readonly=True)
    out: dict[bytes, tuple[int, bytes]] = {}
    dupes = []
    for uid, body in fetch_bodies(m).items():
        mid = message_id(body)
        if mid in out:
            dupes.append(mid)
        out[mid] = (uid, body)
    assert not dupes, f"messages present twice: {dupes[:5]}"
    return info["UIDVALIDITY"], out


class ReplicationTest(unittest.TestCase):
    def test_every_acknowledged_message_is_on_the_replica_after_the_master_is_sigkilled(self):
        """durability = "replica" (strict): 1,000 deliveries, the master SIGKILLed at a
        random moment; after failing over to the replica, every message that got 250 is
        there, byte for byte."""
        rng = random.Random(SEED)
        factory = MessageFactory(seed=SEED)
        user = f"durable@{DOMAIN}"
        ctx = f"(seed {SEED}; rerun with TANDEM_E2E_SEED={SEED})"
        strict = 'durability = "replica"\nreplica_timeout_ms = 5000\non_replica_timeout = "strict"\n'
        with Cluster(["a", "b"], slots("a", ["b"], extra=strict)) as c:
            c.start()
            c.add_user(user, PW)
            c.wait_synced("a")
            total, conns = 1000, 4
            kill_after = rng.randint(100, 900)
            acked: dict[bytes, bytes] = {}
            lock = threading.Lock()
            killed = threading.Event()

            def deliverer(w: int) -> None:
                try:
                    with c["a"].lmtp(timeout=20) as l:
                        for n in range(w, total, conns):
                            msg = factory.message(n, to=user)
                            r = l.transaction("sender@example.net", [user], msg)
                            if r.delivered(user):
                                with lock:
                                    acked[message_id(msg)] = msg
                                    if len(acked) >= kill_after and not killed.is_set():
                                        killed.set()
                                        c["a"].kill()
                except (OSError, smtplib.SMTPException):
                    return  # the master died under us: expected

            threads = [threading.Thread(target=deliverer, args=(w,), daemon=True) for w in range(conns)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            self.assertTrue(killed.is_set(), f"only {len(acked)} deliveries were acknowledged {ctx}")
            self.assertGreaterEqual(len(acked), kill_after)
            # Fail over: b becomes the master at epoch 2 (a stays dead).
            c["b"].stop()
            c.write_cluster(slots("b", ["a"], epoch=2, extra=strict.replace("strict", "degrade")))
            c.start("b")
            m = c["b"].imaps(user, PW)
            _, have = mailbox_by_id(m)
            m.logout()
            missing = [mid for mid in acked if mid not in have]
            self.assertEqual(missing, [], f"{len(missing)} of {len(acked)} acknowledged messages lost {ctx}")
            for mid, msg in acked.items():
                self.assertEqual(have[mid][1], msg, f"{mid!r} differs on the replica {ctx}")
            damaged = [e for e in c["b"].alerts() if "corrupt" in e.get("kind", "")]
            self.assertEqual(damaged, [], "the promoted replica found damaged data")

    def test_corruption_on_the_master_never_reaches_the_replica_and_audit_repairs_from_it(self):
        factory = MessageFactory(seed=SEED + 1)
        user = f"integrity@{DOMAIN}"
        with Cluster(["a", "b"], slots("a", ["b"])) as c:
            sent = [factory.message(i, to=user) for i in range(6)]
            start_with_mail(c, user, sent)

            # A flipped byte in a message both copies hold: the replica keeps its good copy
            # through new deliveries and a full compare.
            victim = c["a"].blob_of(sent[2])
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0x01
            victim.write_bytes(bytes(data))
            c["a"].deliver(user, factory.message(50, to=user))
            r = c["a"].cli("cluster", "sync")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(b"in sync", r.stdout)
            c.wait_synced("a")
            self.assertEqual(c["b"].blob_of(sent[2]).read_bytes(), sent[2])

            # Audit on the master finds it and repairs it from the replica.
            r = c["a"].cli("audit", "--repair", "--from-replica")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            r = c["a"].cli("audit")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            m = c["a"].imaps(user, PW)
            select(m)
            bodies = fetch_bodies(m)
            m.logout()
            self.assertEqual(bodies[3], sent[2], "the repaired message reads back as sent")

            # A message damaged on the master before the replica got it is never sent;
            # everything else still is.
            c["b"].stop()
            bad, good = factory.message(60, to=user), factory.message(61, to=user)
            c["a"].deliver_many(user, [bad, good])
            victim = c["a"].blob_of(bad)
            data = bytearray(victim.read_bytes())
            data[10] ^= 0x40
            victim.write_bytes(bytes(data))
            c.start("b")
            wait = time.monotonic() + 60
            while not c.events("a", "replication_withheld") and time.monotonic() < wait:
                time.sleep(0.2)
            self.assertTrue(c.events("a", "replication_withheld"), c["a"].events()[-10:])
            c.wait_synced("a")
            self.assertEqual(c["b"].blob_of(good).read_bytes(), good)
            with self.assertRaises(AssertionError):
                c["b"].blob_of(bad)
            for f in c["b"].blob_files():
                self.assertNotEqual(f.read_bytes(), bytes(data), "damaged bytes reached the replica")

    def test_a_stopped_replica_catches_up_a_new_one_bootstraps_and_verify_finds_nothing(self):
        factory = MessageFactory(seed=SEED + 2)
        user = f"catchup@{DOMAIN}"
        with Cluster(["a", "b", "c"], slots("a", ["b"])) as c:
            c.start("a", "b")
            c.add_user(user, PW)
            c["a"].deliver_many(user, [factory.message(i, to=user) for i in range(40)])
            c.wait_synced("a")
            c["b"].stop()
            c["a"].deliver_many(user, [factory.message(i, to=user) for i in range(40, 120)])
            m = c["a"].imaps(user, PW)
            select(m)
            m.uid("STORE", "1:30", "+FLAGS", r"(\Seen $Forwarded)")
            m.uid("STORE", "5:9", "+FLAGS", r"(\Deleted)")
            m.expunge()
            m.create("Projects")
            m.uid("MOVE", "40:60", "Projects")
            m.logout()
            st = [s for s in c.status("a") if s["slot"] == "s1"][0]
            self.assertFalse(st["replicas"][0]["connected"])
            self.assertGreater(st["replicas"][0]["lag_changes"], 0)
            c.start("b")
            c.wait_synced("a")
            r = c.verify("a")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(b"no difference", r.stdout)

            # A brand-new replica: c joins.
            c.write_cluster(slots("a", ["b", "c"]))
            c["a"].stop()
            c.start("a", "c")
            r = c["a"].cli("cluster", "sync")
            self.assertEqual(r.returncode, 0, r.stderr)
            c.wait_synced("a")
            r = c.verify("a")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(r.stdout.count(b"no difference"), 2, r.stdout)
            r = c["a"].cli("status")
            self.assertEqual(r.returncode, 0, r.stdout)
            for line in r.stdout.decode().splitlines():
                self.assertLessEqual(len(line), 80, line)

    def test_split_brain_keeps_every_message_once_with_new_uids_and_the_same_uidvalidity(self):
        factory = MessageFactory(seed=SEED + 3)
        user = f"split@{DOMAIN}"
        with Cluster(["a", "b"], slots("a", ["b"])) as c:
            common = [factory.message(i, to=user) for i in range(5)]
            start_with_mail(c, user, common)
            m = c["a"].imaps(user, PW)
            uidvalidity, _ = mailbox_by_id(m)
            m.logout()
            # Partition: b is gone; a keeps accepting mail b never sees.
            c["b"].kill()
            only_a = [factory.message(i, to=user) for i in range(100, 104)]
            c["a"].deliver_many(user, only_a)
            c["a"].kill()
            # b is promoted (epoch 2) and accepts other mail at the same UIDs.
            c.write_cluster(slots("b", ["a"], epoch=2))
            c.start("b")
            only_b = [factory.message(i, to=user) for i in range(200, 203)]
            c["b"].deliver_many(user, only_b)
            # a rejoins as b's replica: reconcile.
            c.start("a")
            c.wait_synced("b")
            self.assertTrue(c.events("b", "split_brain_reconcile"), c["b"].events()[-10:])
            m = c["b"].imaps(user, PW)
            uv, have = mailbox_by_id(m)
            uids = sorted(u for u, _ in have.values())
            m.logout()
            self.assertEqual(uv, uidvalidity, "UIDVALIDITY changed")
            want = {message_id(x): x for x in common + only_a + only_b}
            self.assertEqual(set(have), set(want), "a message was lost or invented")
            for mid, body in want.items():
                self.assertEqual(have[mid][1], body)
            self.assertEqual(len(uids), len(set(uids)))
            self.assertEqual(uids, sorted(uids))
            # Old UIDs a's clients saw for a-only mail are never reused for other mail.
            self.assertGreater(min(have[message_id(x)][0] for x in only_a), 5)
            r = c.verify("b")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            # The former master, now a replica, holds exactly the same.
            c["b"].stop()
            c.write_cluster(slots("a", ["b"], epoch=3))
            c["a"].stop()
            c.start("a")
            m = c["a"].imaps(user, PW)
            uv2, have2 = mailbox_by_id(m)
            m.logout()
            self.assertEqual((uv2, {k: v[1] for k, v in have2.items()}), (uv, {k: v[1] for k, v in have.items()}))


if __name__ == "__main__":
    unittest.main()
