#!/usr/bin/env python3
"""Clients that never read, against a running memprobe with a full history.

    python3 benches/stalled.py PID HOST:PORT [COUNT] [CGROUP_DIR]

Opens COUNT (400) connections that pipeline `GET /history.json` and never read the answers,
topping them up (and opening again any memprobe closed) for 15 s; meanwhile times /ready from
a separate client and samples memprobe's resident memory. With CGROUP_DIR (memprobe's memory
cgroup, v1 or v2), also reports the cgroup's limit, its peak and its OOM kills. Prints one
markdown table. Standard library only.
"""
import os
import resource
import socket
import sys
import time

from flood import probe  # the same timed /ready as the connection flood

BATCH = b"GET /history.json HTTP/1.1\r\nHost: stalled\r\n\r\n" * 100


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def read(cgroup, *names):
    for name in names:
        try:
            with open(os.path.join(cgroup, name)) as f:
                return f.read()
        except OSError:
            continue
    return ""


def oom_kills(cgroup):
    text = read(cgroup, "memory.events", "memory.oom_control")
    for line in text.splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def connect(host, port):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.setblocking(False)
        s.send(BATCH)
        return s
    except OSError:
        return None


def top_up(slots, host, port):
    reopened = 0
    for i, s in enumerate(slots):
        alive = False
        if s is not None:
            try:
                s.send(BATCH)
                alive = True
            except BlockingIOError:
                alive = True
            except OSError:
                s.close()
        if not alive:
            slots[i] = connect(host, port)
            reopened += 1
    return reopened


def main():
    pid, addr = int(sys.argv[1]), sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    cgroup = sys.argv[4] if len(sys.argv) > 4 else None
    host, port = addr.rsplit(":", 1)
    port = int(port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    idle = rss_kib(pid)
    slots = [connect(host, port) for _ in range(count)]
    peak, latencies, good, reopened = idle, [], 0, 0
    until = time.monotonic() + 15
    while time.monotonic() < until:
        reopened += top_up(slots, host, port)
        code, took = probe(addr, "/ready")
        good += code == 200 and took < 1
        latencies.append(took)
        peak = max(peak, rss_kib(pid))
    alive = rss_kib(pid) > 0
    for s in slots:
        if s is not None:
            s.close()
    latencies.sort()
    print("| figure | value |")
    print("|---|---|")
    print(f"| connections pipelining `GET /history.json`, never read | {count:,} (opened again when closed: {reopened:,} times) |")
    print(f"| /ready answered 200 within 1 s | {good} of {len(latencies)} |")
    print(f"| /ready latency, median / worst | {latencies[len(latencies) // 2] * 1000:.1f} ms / {latencies[-1] * 1000:.1f} ms |")
    print(f"| resident memory before | {idle / 1024:.1f} MiB |")
    print(f"| resident memory, peak under the attack | {peak / 1024:.1f} MiB |")
    if cgroup:
        limit = read(cgroup, "memory.max", "memory.limit_in_bytes").strip()
        top = read(cgroup, "memory.peak", "memory.max_usage_in_bytes").strip()
        limit_text = f"{int(limit) / 1048576:.0f} MiB" if limit.isdigit() else limit
        top_text = f"{int(top) / 1048576:.1f} MiB" if top.isdigit() else "not reported"
        print(f"| memory cgroup: limit / peak usage | {limit_text} / {top_text} |")
        print(f"| OOM kills in the cgroup | {oom_kills(cgroup)} |")
    print(f"| memprobe still running | {'yes' if alive else 'no'} |")


if __name__ == "__main__":
    main()
