"""Integrity (DESIGN invariants 2, 3, 4, 8, 9) against the real binary: the start-up
self-check refuses a damaged slot while another slot serves, `tandem audit` finds damage
with the right exit codes (in-process and through a running server), an audit under
continuous LMTP delivery reports nothing false, the scrubber raises alerts that reach a
webhook, and `tandem quota`/`events`/`check` work for an operator."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import unittest

from harness import DOMAIN, MessageFactory, Server, fetch_bodies, select, wait_until


def audit_json(s: Server, *args: str) -> tuple[int, dict]:
    r = s.cli("audit", "--json", *args, timeout=120)
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"audit --json printed no JSON (exit {r.returncode}): "
                             f"{r.stdout!r} {r.stderr!r}")
    return r.returncode, data


def problems(report: dict) -> list[dict]:
    return [f for s in report["slots"] for f in s["findings"] if f["problem"]]


class IntegrityTest(unittest.TestCase):
    msgs = MessageFactory(seed=4004)

    def server(self, **kw) -> Server:
        s = Server(**kw)
        self.addCleanup(s.close)
        return s

    def test_damaged_slot_is_refused_at_start_while_the_other_slot_serves(self):
        s = self.server(start=False)
        for name in ("s1", "s2"):
            r = s.cli("debug-create-slot", name)
            self.assertEqual(r.returncode, 0, r.stderr)
        s.start()
        alice, bob = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
        s.add_user(alice, "pw-a")  # new accounts go to the emptiest slot: s1, then s2
        s.add_user(bob, "pw-b")
        self.assertIn(b"slot s2", s.cli("user", "list").stdout)
        sent = [self.msgs.message(i, to=alice) for i in range(3)]
        s.deliver_many(alice, sent)
        s.deliver_many(bob, [self.msgs.message(9, to=bob)])
        self.assertEqual(s.stop(), 0)

        header = s.data / "slots" / "s2" / "SLOT"
        good = header.read_bytes()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x10
        header.write_bytes(bytes(bad))
        s.start()

        # The healthy slot serves as before.
        m = s.imaps(alice, "pw-a")
        select(m)
        self.assertEqual(sorted(fetch_bodies(m).values()), sorted(sent))
        m.logout()
        self.assertTrue(s.deliver(alice, self.msgs.message(20, to=alice)).all_delivered())

        # The damaged one tells its users the truth: unavailable, not "no such user".
        with s.raw_imap() as r:
            _, tagged, _ = r.command(f'LOGIN "{bob}" "pw-b"')
            self.assertRegex(tagged, rb"^\S+ NO \[UNAVAILABLE\] ", tagged)
        res = s.deliver(bob, self.msgs.message(21, to=bob))
        code, text = res.rcpt[bob]
        self.assertEqual(code, 451, text)
        self.assertIn(b"4.3.0", text)
        self.assertNotIn(b"no such user", text.lower())

        refused = [e for e in s.alerts() if e.get("kind") == "slot_refused"]
        self.assertTrue(refused, s.events())
        self.assertEqual(refused[-1].get("slot"), "s2")

        # `tandem check` through the running server names the slot and why.
        r = s.cli("check")
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 2, out)
        self.assertIn("slot s1: ok (serving)", out)
        self.assertIn("slot s2: FAILED", out)
        self.assertIn("header", out)
        code, rep = audit_json(s, "--slot", "s2")
        self.assertEqual(code, 2)
        self.assertEqual([f["kind"] for f in problems(rep)], ["slot_header"])

        # Put right by hand: check says so, and the next start serves it.
        header.write_bytes(good)
        r = s.cli("check", "--slot", "s2")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(b"restart", r.stdout)
        s.restart()
        m = s.imaps(bob, "pw-b")
        select(m)
        self.assertEqual(len(fetch_bodies(m)), 1)
        m.logout()

    def test_audit_finds_damage_quarantines_it_and_exit_codes_match(self):
        s = self.server()
        user = f"carol@{DOMAIN}"
        s.add_user(user, "pw-c")
        sent = [self.msgs.message(100 + i, to=user) for i in range(6)]
        s.deliver_many(user, sent)

        # Clean, through the running server.
        code, rep = audit_json(s)
        self.assertEqual(code, 0, rep)
        self.assertEqual(rep["exit"], 0)
        self.assertGreaterEqual(rep["slots"][0]["stats"]["blobs"], 6)
        r = s.cli("audit")
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"clean", r.stdout)
        for line in r.stdout.decode().splitlines():
            self.assertLessEqual(len(line), 80, f"summary line too wide: {line!r}")

        # Flip a byte of one message while serving: found, located, never served as good.
        victim = s.blob_of(sent[2])
        data = bytearray(victim.read_bytes())
        data[len(data) // 3] ^= 0x01
        victim.write_bytes(bytes(data))
        code, rep = audit_json(s)
        self.assertEqual(code, 2)
        [f] = problems(rep)
        self.assertEqual((f["kind"], f["user"], f["mailbox"], f["uid"]),
                         ("corrupt_blob", user, "INBOX", 3))
        m = s.imaps(user, "pw-c")
        select(m)
        typ, _ = m.uid("FETCH", "3", "(BODY.PEEK[])")
        self.assertEqual(typ, "NO", "a damaged message must never be served as good")
        m.logout()

        # Repair moves the evidence aside (never deletes it); the message stays an error.
        code, rep = audit_json(s, "--repair")
        self.assertEqual(code, 2, "nothing can supply the good copy yet")
        qdir = s.slot_dir / "quarantine"
        self.assertEqual([p.read_bytes() for p in qdir.iterdir()], [bytes(data)])
        alerts = [e for e in s.alerts() if e.get("kind") == "corrupt_blob"]
        self.assertTrue(any(e.get("uid") == 3 and e.get("user") == user for e in alerts), alerts)

        # Offline (no server): same answer, now "missing".
        self.assertEqual(s.stop(), 0)
        code, rep = audit_json(s)
        self.assertEqual(code, 2)
        self.assertEqual([f["kind"] for f in problems(rep)], ["missing_blob"])
        r = s.cli("audit")
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"LEFT", r.stdout)

        # The same message delivered again heals it: clean (exit 0) from then on.
        s.start()
        self.assertTrue(s.deliver(user, sent[2]).all_delivered())
        code, rep = audit_json(s, "--repair")
        self.assertEqual(code, 0, problems(rep))

        # Orphans: an expunged message's blob, old enough, is garbage: listed, exit 0,
        # and deleted only by --repair.
        m = s.imaps(user, "pw-c")
        select(m)
        m.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
        m.expunge()
        m.logout()
        orphan = s.blob_of(sent[0])
        old = time.time() - 3 * 86400
        os.utime(orphan, (old, old))
        code, rep = audit_json(s)
        self.assertEqual(code, 0)
        self.assertEqual([f["kind"] for f in rep["slots"][0]["findings"]], ["orphan_blob"])
        self.assertTrue(orphan.exists())
        code, rep = audit_json(s, "--repair")
        self.assertEqual(code, 0)
        self.assertFalse(orphan.exists(), "an old orphan is collected by --repair")

    def test_online_audit_under_continuous_delivery_finds_nothing_false(self):
        s = self.server()
        user = f"dave@{DOMAIN}"
        s.add_user(user, "pw-d")
        s.deliver_many(user, [self.msgs.message(200 + i, to=user) for i in range(20)])
        stop = threading.Event()
        failures: list[str] = []
        delivered = [0]

        def deliver() -> None:
            i = 0
            deadline = time.monotonic() + 60  # bounded however the audits go
            try:
                with s.lmtp() as l:
                    while not stop.is_set() and time.monotonic() < deadline:
                        r = l.transaction("x@example.net", [user], self.msgs.message(300 + i, to=user))
                        if not r.all_delivered():
                            failures.append(repr(r))
                        else:
                            delivered[0] += 1
                        i += 1
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(repr(e))

        t = threading.Thread(target=deliver)
        t.start()
        try:
            wait_until(lambda: delivered[0] > 5, 10)
            for args in ([], ["--repair"], ["--rate-mb-s", "50"]):
                code, rep = audit_json(s, *args)
                self.assertEqual(problems(rep), [], f"false positives with {args}")
                self.assertEqual(code, 0)
        finally:
            stop.set()
            t.join(70)
        self.assertEqual(failures, [], "deliveries failed during the audit")
        self.assertGreater(delivered[0], 10)
        code, rep = audit_json(s)
        self.assertEqual(code, 0, problems(rep))
        m = s.imaps(user, "pw-d")
        self.assertEqual(int(select(m)["EXISTS"]), 20 + delivered[0])
        m.logout()

    def test_scrubber_alerts_reach_the_webhook(self):
        got: list[dict] = []

        class Sink(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length", "0"))
                got.append(json.loads(self.rfile.read(n)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        self.addCleanup(sink.shutdown)
        port = sink.server_address[1]
        # A pass every ~3.5 s (the first after a tenth of that).
        s = self.server(extra_toml=(
            "[integrity]\nscrub_period_days = 0.00004\n"
            f'[events]\nwebhook_url = "http://127.0.0.1:{port}/hook"\n'))
        user = f"erin@{DOMAIN}"
        s.add_user(user, "pw-e")
        sent = [self.msgs.message(400 + i, to=user) for i in range(3)]
        s.deliver_many(user, sent)
        self.assertTrue(wait_until(lambda: any(e.get("kind") == "scrub_done" for e in s.events()), 20),
                        "the scrubber never finished a pass")
        victim = s.blob_of(sent[1])
        data = bytearray(victim.read_bytes())
        data[10] ^= 0x40
        victim.write_bytes(bytes(data))
        hit = wait_until(lambda: [e for e in got if e.get("kind") == "corrupt_blob"], 30)
        self.assertTrue(hit, f"no corrupt_blob alert reached the webhook; events: {s.events()}")
        e = hit[0]
        self.assertEqual((e.get("slot"), e.get("user"), e.get("mailbox"), e.get("uid")),
                         ("s1", user, "INBOX", 2))
        self.assertEqual(e.get("level"), "alert")
        self.assertTrue(all(x.get("level") == "alert" for x in got), "only alerts are posted")

        # `tandem events`: one line per event, UTC dates, 80 columns.
        r = s.cli("events")
        lines = r.stdout.decode().splitlines()
        self.assertTrue(any("corrupt_blob" in l for l in lines))
        for l in lines:
            self.assertRegex(l, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ (ALERT|INFO ) ")
            self.assertLessEqual(len(l), 80, l)

    def test_quota_show_set_rebuild(self):
        s = self.server()
        user = f"frank@{DOMAIN}"
        s.add_user(user, "pw-f")
        msgs = [self.msgs.message(500 + i, to=user) for i in range(4)]
        s.deliver_many(user, msgs)
        r = s.cli("quota", "set", user, "1M")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = s.cli("quota", "show", user, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        [u] = json.loads(r.stdout)
        self.assertEqual((u["address"], u["limit_bytes"], u["messages"]), (user, 1_000_000, 4))
        self.assertEqual(u["usage_bytes"], sum(len(m) for m in msgs))
        r = s.cli("quota", "rebuild")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"already right", r.stdout)
        r = s.cli("quota", "set", "nobody@example.com", "1G")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"not an account", r.stderr)


if __name__ == "__main__":
    unittest.main()
