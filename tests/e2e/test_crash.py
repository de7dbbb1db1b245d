"""Durable before acknowledged (DESIGN invariant 1) and UIDs never reused (invariant 5),
checked by SIGKILLing the server in the middle of concurrent LMTP deliveries."""

from __future__ import annotations

import os
import random
import re
import smtplib
import threading
import time
import unittest

from harness import DOMAIN, MessageFactory, Server, fetch, fetch_bodies, select, uid_set

ROUNDS = 20
CONNECTIONS = 3
PER_CONNECTION_MAX = 400  # bounds one round even if the kill comes late
SEED = int(os.environ.get("TANDEM_E2E_SEED", "4242"))


def message_id(msg: bytes) -> bytes:
    mm = re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", msg)
    assert mm, msg[:200]
    return mm.group(1)


class CrashTest(unittest.TestCase):
    def test_acknowledged_mail_survives_sigkill(self):
        rng = random.Random(SEED)
        factory = MessageFactory(seed=SEED)
        user, pw = f"crash@{DOMAIN}", "crash-pw"
        ctx = f"(seed {SEED}; rerun with TANDEM_E2E_SEED={SEED})"
        t_start = time.monotonic()

        attempted: dict[bytes, bytes] = {}  # message-id → bytes, every message ever sent
        acked: dict[bytes, bytes] = {}  # message-id → bytes, got 250
        lock = threading.Lock()
        uid_owner: dict[tuple[int, int], bytes] = {}  # (uidvalidity, uid) → message-id
        max_uid: dict[int, int] = {}  # uidvalidity → highest UID ever seen
        verified_bytes: set[int] = set()  # UIDs whose bytes were compared already

        with Server() as s:
            s.add_user(user, pw)
            for rnd in range(ROUNDS):
                stop = threading.Event()

                def deliverer(conn: int) -> None:
                    try:
                        l = s.lmtp(timeout=5)
                    except OSError:
                        return
                    try:
                        for n in range(PER_CONNECTION_MAX):
                            if stop.is_set():
                                return
                            msg = factory.message(rnd * 100_000 + conn * 10_000 + n, to=user)
                            mid = message_id(msg)
                            with lock:
                                attempted[mid] = msg
                            r = l.transaction("crash@example.net", [user], msg)
                            if r.delivered(user):
                                with lock:
                                    acked[mid] = msg
                    except (OSError, smtplib.SMTPException):
                        return  # the server died under us: expected
                    finally:
                        try:
                            l.close()
                        except Exception:
                            pass

                threads = [threading.Thread(target=deliverer, args=(c,), daemon=True) for c in range(CONNECTIONS)]
                for t in threads:
                    t.start()
                time.sleep(rng.uniform(0.05, 0.4))
                s.kill()
                stop.set()
                for t in threads:
                    t.join(15)
                    self.assertFalse(t.is_alive(), f"a delivery thread hung after the kill {ctx}")

                s.start()
                where = f"round {rnd} {ctx}"
                m = s.imaps(user, pw)
                try:
                    info = select(m, readonly=True)
                    validity = info["UIDVALIDITY"]
                    rows = fetch(m, "1:*", "(UID)")
                    uids = [d["UID"] for d in rows]
                    self.assertEqual(uids, sorted(set(uids)), f"UIDs not strictly increasing {where}")
                    self.assertEqual(len(uids), info["EXISTS"], where)
                    new = [u for u in uids if (validity, u) not in uid_owner]
                    bodies = fetch_bodies(m, uid_set(new)) if new else {}
                    last_round = rnd == ROUNDS - 1
                    if last_round:
                        bodies = fetch_bodies(m)
                finally:
                    m.logout()

                # UIDs: old ones keep their message, new ones are above every UID seen before.
                prev_max = max_uid.get(validity, 0)
                present_ids = {}
                for u in uids:
                    if (validity, u) in uid_owner:
                        present_ids[uid_owner[(validity, u)]] = u
                for u in new:
                    self.assertGreater(u, prev_max, f"UID {u} reused or below an earlier UID {prev_max} {where}")
                    self.assertIn(u, bodies, f"UID {u} listed but its body could not be fetched {where}")
                for (v, u), mid in uid_owner.items():
                    if v == validity:
                        self.assertIn(u, uids, f"UID {u} ({mid!r}) vanished after a crash {where}")
                for u, body in bodies.items():
                    mid = message_id(body)
                    self.assertIn(mid, attempted, f"UID {u} holds a message nobody sent {where}")
                    self.assertEqual(body, attempted[mid], f"UID {u} {mid!r} is not the bytes sent {where}")
                    if (validity, u) in uid_owner:
                        self.assertEqual(uid_owner[(validity, u)], mid, f"UID {u} changed content {where}")
                    else:
                        self.assertNotIn(mid, present_ids, f"{mid!r} stored twice (UIDs {present_ids.get(mid)}, {u}) {where}")
                        uid_owner[(validity, u)] = mid
                        present_ids[mid] = u
                    verified_bytes.add(u)
                if uids:
                    max_uid[validity] = max(prev_max, uids[-1])

                # Every acknowledged message is there.
                with lock:
                    missing = [mid for mid in acked if mid not in present_ids]
                self.assertEqual(missing, [], f"{len(missing)} messages got 250 but are gone {where}")
                self.assertEqual(s.alerts(), [], f"alert events after a crash {where}")

            self.assertEqual(len(max_uid), 1, f"UIDVALIDITY changed across crashes: {sorted(max_uid)} {ctx}")
            self.assertGreater(len(acked), ROUNDS, f"too few deliveries got through to mean anything {ctx}")
            elapsed = time.monotonic() - t_start
            print(f"\n[crash] {ROUNDS} rounds, {len(attempted)} sent, {len(acked)} acked, "
                  f"{len(uid_owner)} stored, {elapsed:.1f}s", flush=True)


if __name__ == "__main__":
    unittest.main()
