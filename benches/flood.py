#!/usr/bin/env python3
"""A flood of idle and half-sent connections against a running memprobe.

    python3 benches/flood.py PID HOST:PORT [COUNT]

Opens COUNT (10,000) connections, every other one sending half a request head; meanwhile
times 20 probes of /ready and /healthz from a separate client and reads memprobe's resident
memory; then closes the flood and reports how long memprobe takes to come back within
2 MiB of its idle figure. Prints one markdown table. Standard library only.
"""
import resource
import socket
import sys
import time
import urllib.request


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def probe(addr, path):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError:
        code = 0
    return code, time.monotonic() - started


def main():
    pid, addr = int(sys.argv[1]), sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    host, port = addr.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    for _ in range(50):
        probe(addr, "/status")
    idle = rss_kib(pid)
    flood = []
    for i in range(count):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            if i % 2 == 0:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: flood\r\n")
            flood.append(s)
        except OSError:
            pass
    peak = rss_kib(pid)
    latencies, failures = [], 0
    for path in ["/ready", "/healthz"] * 10:
        code, took = probe(addr, path)
        failures += code != 200
        latencies.append(took)
        peak = max(peak, rss_kib(pid))
    for s in flood:
        s.close()
    closed = time.monotonic()
    back = None
    while time.monotonic() - closed < 30:
        if rss_kib(pid) <= idle + 2048:
            back = time.monotonic() - closed
            break
        time.sleep(0.1)
    after = rss_kib(pid)
    latencies.sort()
    print("| figure | value |")
    print("|---|---|")
    print(f"| connections opened | {len(flood):,} of {count:,} |")
    print(f"| probes answered 200 | {20 - failures} of 20 |")
    print(f"| probe latency, median / worst | {latencies[10] * 1000:.1f} ms / {latencies[-1] * 1000:.1f} ms |")
    print(f"| resident memory idle | {idle / 1024:.1f} MiB |")
    print(f"| resident memory, peak under the flood | {peak / 1024:.1f} MiB |")
    back_text = f"{back:.1f} s" if back is not None else "not within 30 s"
    print(f"| back within 2 MiB of idle after the flood | {back_text} ({after / 1024:.1f} MiB) |")


if __name__ == "__main__":
    main()
