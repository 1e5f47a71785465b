#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind.

Instruction counts do not move with the machine's load, so small changes
to the hot path can be compared where wall-clock numbers are noise.

    python3 benches/callgrind.py [--config minimal|realistic] [--requests N]

Starts an nginx upstream, runs `cutover run` under
`valgrind --tool=callgrind`, sends N and then 2N more keep-alive requests
over 4 connections, and reports (Ir after 3N - Ir after N) / 2N: the
instructions of one request with start-up excluded. Needs valgrind and
nginx (benches/compare.sh installs nginx; `apt-get install valgrind`).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

REQUEST = (b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
           b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
           b"Cookie: _ga=GA1.2.3; cutover=5f2c7a1e9b3d4c6a8e0f1a2b3c4d5e6f; theme=dark\r\n\r\n")


def client(n):
    s = socket.create_connection(("127.0.0.1", compare.PROXY))
    buf = b""
    for _ in range(n):
        s.sendall(REQUEST)
        while b"hello" not in buf:
            buf += s.recv(65536)
        buf = buf[buf.index(b"hello") + 5:]
    s.close()


def send(n, conns=4):
    threads = [threading.Thread(target=client, args=(n // conns,)) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def total_ir(out_file, pid):
    """Dump the running callgrind's counters and read the summed Ir."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    time.sleep(0.5)
    total = 0
    d = os.path.dirname(out_file)
    for name in os.listdir(d):
        if name.startswith(os.path.basename(out_file)):
            with open(os.path.join(d, name)) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=["minimal", "realistic"], default="minimal")
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cutover-callgrind-")
    upstream = compare.Server("upstream", ["nginx", "-c", compare.nginx_upstream_conf(work), "-p", work,
                                           "-g", "daemon off;"], compare.UP_BLUE)
    conf = compare.cutover_minimal_conf(work) if args.config == "minimal" else compare.cutover_realistic_conf(work)
    out = os.path.join(work, "callgrind.out")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             compare.CUTOVER, "run", "-c", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        compare.wait_port(compare.PROXY, timeout=60)
        n = args.requests
        send(n)
        first = total_ir(out, proc.pid)
        send(2 * n)
        second = total_ir(out, proc.pid)
        print(f"profile: {out}*  (callgrind_annotate)", file=sys.stderr)
        print(f"{args.config}: {(second - first) / (2 * n):.0f} instructions per request "
              f"(callgrind, {2 * n} requests after {n} warm-up)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        upstream.stop()


if __name__ == "__main__":
    main()
