"""Benchmark driver for scripts/bench: real binary, real sockets, loopback only."""
import argparse, json, os, random, resource, smtplib, socket, ssl, statistics
import subprocess, sys, tempfile, threading, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Server:
    def __init__(self, binary):
        self.bin = binary
        self.dir = tempfile.mkdtemp(prefix="tandem-bench-")
        self.ports = {k: free_port() for k in ("imap", "imaps", "lmtp")}
        with open(os.path.join(self.dir, "tandem.toml"), "w") as f:
            f.write("allow_plaintext_auth = true\n[listen]\n")
            for k, p in self.ports.items():
                f.write(f'{k} = "127.0.0.1:{p}"\n')
        self.proc = subprocess.Popen([binary, "--data", self.dir, "serve"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ports["imap"]), 0.2).close(); break
            except OSError:
                time.sleep(0.05)
        subprocess.run([binary, "--data", self.dir, "user", "add", "bench@example.com",
                        "--password-stdin"], input=b"pw\n", check=True, stdout=subprocess.DEVNULL)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate(); self.proc.wait(30)
        subprocess.run(["rm", "-rf", self.dir])

def message(i, size):
    body = ("x" * 75 + "\r\n") * (size // 77)
    return (f"From: a@example.org\r\nTo: bench@example.com\r\nSubject: m{i}\r\n"
            f"Message-ID: <{i}@bench>\r\n\r\n{body}").encode()

def lmtp_rate(srv, total, conns, size=5000):
    per = total // conns
    errors = []
    def worker(w):
        try:
            with smtplib.LMTP("127.0.0.1", srv.ports["lmtp"]) as l:
                for i in range(per):
                    l.sendmail("a@example.org", ["bench@example.com"], message(w * per + i, size))
        except Exception as e:
            errors.append(e)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(conns)]
    for t in ts: t.start()
    for t in ts: t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return per * conns / dt

def idle_memory(srv, n):
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    base = srv.rss_kib()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", srv.ports["imap"]))
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a LOGIN bench@example.com pw\r\n")
        while not f.readline().startswith(b"a "):
            pass
        s.sendall(b"b SELECT INBOX\r\n")
        while not f.readline().startswith(b"b "):
            pass
        socks.append((s, f))
    time.sleep(1)
    after = srv.rss_kib()
    for s, f in socks:
        s.close()
    return base, after, (after - base) / n

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--json")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    results = {}
    srv = Server(a.bin)
    try:
        lmtp_rate(srv, 200, 4)  # warm-up
        for conns in (1, 8):
            rates = [lmtp_rate(srv, 1000, conns) for _ in range(a.runs)]
            results[f"lmtp_5k_msgs_per_s_{conns}conn"] = statistics.median(rates)
        base, after, per = idle_memory(srv, 500)
        results["rss_kib_before_idle"] = base
        results["rss_kib_with_500_idle"] = after
        results["rss_kib_per_idle_conn"] = per
    finally:
        srv.stop()
    print(f"{'workload':<42}{'tandem':>12}")
    print(f"{'LMTP 5 KB, 1 connection (msg/s)':<42}{results['lmtp_5k_msgs_per_s_1conn']:>12.0f}")
    print(f"{'LMTP 5 KB, 8 connections (msg/s)':<42}{results['lmtp_5k_msgs_per_s_8conn']:>12.0f}")
    print(f"{'RSS per idle IMAP conn, 500 (KiB)':<42}{results['rss_kib_per_idle_conn']:>12.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)

if __name__ == "__main__":
    main()
