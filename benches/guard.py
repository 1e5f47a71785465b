#!/usr/bin/env python3
"""CI's performance guard: cutover's instructions per request against
nginx's, and its peak memory with 10,000 clients, each held to the budget
recorded in benches/budget.toml. Exits 1 naming the figure over budget.

    python3 benches/guard.py [--binary PATH] [--only instructions|memory]

Instructions (callgrind, as benches/callgrind.py counts them): cutover
(the release build, benches/realistic.toml) and then nginx (one process,
configured by compare.py to send the upstream the same request) each run
under callgrind in front of the same nginx upstream and get one fixed mix:
a warm-up of every kind, then GETs and then 4 KiB POSTs on one keep-alive
connection, one request at a time, and one HTTP/2 client (h2load, h2c
with prior knowledge, one stream at a time: nginx speaks h2c on a port of
its own). One at a time, every request takes the same path through the
proxy's event loop; over several connections at once the count moved
with how many requests each wake-up happened to find ready. A counter
dump after each part gives its instructions; the weighted total is all
the parts' instructions over all their requests. The budget
is on the ratio cutover / nginx: what the machine's CPU, libc and
valgrind do to both counts cancels out, and nothing else on the machine
moves either.

Memory (compare.py's measurement): 10,000 clients each open a
connection, make one request and stay; the peak RSS (VmHWM) of cutover,
then of nginx for comparison. The budget is cutover's MiB: its heap does
not scale with the machine, and a ratio would add nginx's own run to
run changes.

Needs valgrind, nginx and h2load (nghttp2-client); .ci/run installs them.
Every process it starts is stopped when it ends, also on failure or after
--timeout seconds.
"""

import argparse
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind  # noqa: E402
import compare  # noqa: E402

BUDGET = os.path.join(compare.ROOT, "benches", "budget.toml")
# Ports of the guard's own, so that it can run beside a benchmark (its
# counts do not move with the machine's load): the upstream, the proxy,
# cutover's admin API, and nginx's h2c port (cutover speaks h2c on its one
# listener).
compare.UP_BLUE, compare.UP_GREEN, compare.PROXY, compare.ADMIN = 18180, 18182, 18181, 19911
NGINX_H2 = 18184
# A browser's 4 KiB upload for the realistic config.
POST = ("POST / HTTP/1.1\r\nHost: shop.example.com\r\n"
        + "".join(h + "\r\n" for h in compare.BROWSER)
        + "Content-Type: application/octet-stream\r\nContent-Length: 4096\r\n\r\n").encode() + b"x" * 4096
CLIENTS = 10_000


def h2(port, n):
    """`n` requests from one HTTP/2 client (h2c, prior knowledge), one
    stream at a time, the browser's headers; every one must be a 200."""
    argv = ["h2load", "-n", str(n), "-c", "1", "-m", "1", "-H", ":authority: shop.example.com"]
    for h in compare.BROWSER:
        name, value = h.split(": ", 1)
        argv += ["-H", f"{name.lower()}: {value}"]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=300).stdout
    m = re.search(r"status codes: (\d+) 2xx", out)
    if not m or int(m.group(1)) != n:
        raise RuntimeError(f"h2load: not {n} answers 2xx:\n{out}")


def parts(n, h2_port):
    """The mix: (name, requests, how to send them)."""
    return [("GET, keep-alive, 1 connection", n, lambda: callgrind.send(n, conns=1)),
            ("POST 4 KiB, keep-alive, 1 connection", n // 2,
             lambda: callgrind.send(n // 2, conns=1, request=POST)),
            ("HTTP/2 (h2c), 1 connection", n // 2, lambda: h2(h2_port, n // 2))]


def instructions(kind, work, n):
    """Instructions per request of each part of the mix, through `kind`."""
    h2_port = NGINX_H2 if kind == "nginx" else compare.PROXY
    argv = callgrind.proxy_argv(kind, "realistic", work, h2_port=h2_port)
    out = os.path.join(work, f"callgrind-{kind}.out")
    mix = parts(n, h2_port)
    got = []
    with callgrind.under_callgrind(argv, out) as proc:
        for _, _, run in parts(n // 4, h2_port):  # warm-up
            run()
        callgrind.dump_ir(out, proc.pid, 1)
        for i, (name, count, run) in enumerate(mix):
            compare.log(f"{kind}: {name}, {count} requests")
            run()
            got.append(callgrind.dump_ir(out, proc.pid, i + 2))
    return [ir / count for ir, (_, count, _) in zip(got, mix)], sum(got) / sum(c for _, c, _ in mix)


def peak_rss(kind, work, runs):
    """Peak RSS (MiB) of `kind` while CLIENTS clients each make one request
    and stay, each client answered: the lowest of `runs` runs. The peak
    grows with how many connections happen to be busy at once (a loaded
    machine parks them later), never the other way, so the lowest is the
    run least inflated by the machine."""
    peaks = []
    for _ in range(runs):
        r = compare.idle_rss(kind, work, CLIENTS)
        if r["failed"]:
            raise RuntimeError(f"{kind}: {r['failed']} of {CLIENTS} clients failed")
        peaks.append(r["peak_mib"])
    compare.log(f"{kind}: peak RSS " + ", ".join(f"{p:.1f}" for p in peaks) + " MiB")
    return min(peaks)


def read_budget(path):
    """`key = number` lines (TOML; tomllib is in Python 3.11 on)."""
    budget = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                key, value = (x.strip() for x in line.split("=", 1))
                budget[key] = float(value)
    return budget


def raise_fd_limit(want):
    """Enough descriptors for the clients (this process) and the proxies
    (which inherit the limit). Root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            sys.exit(f"guard: {CLIENTS} clients need {want} descriptors; the hard limit is {hard} "
                     f"(ulimit -Hn, or run as root)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ports_free():
    """Refuse to start beside another run on the same ports: a proxy that
    cannot bind would leave its clients talking to the other run's."""
    for port in (compare.UP_BLUE, compare.UP_GREEN, compare.PROXY, compare.ADMIN, NGINX_H2):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            continue
        sys.exit(f"guard: port {port} is in use (another guard running?)")


def on_alarm(signum, frame):
    raise TimeoutError("the guard ran out of time (--timeout)")


def on_term(signum, frame):
    sys.exit("guard: terminated")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", metavar="PATH",
                    help="the cutover binary (default: cargo's target/release/cutover)")
    ap.add_argument("--budget", default=BUDGET, help="the budget file (default benches/budget.toml)")
    ap.add_argument("--only", choices=["instructions", "memory"], help="one of the two checks")
    ap.add_argument("--requests", type=int, default=2000,
                    help="GETs of the mix; half as many POSTs and HTTP/2 requests, a quarter of each to warm up")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds before the guard gives up")
    args = ap.parse_args()
    if args.binary:
        compare.CUTOVER = os.path.abspath(args.binary)
    if not os.path.exists(compare.CUTOVER):
        sys.exit(f"guard: no {compare.CUTOVER}: cargo build --release first")
    budget = read_budget(args.budget)
    ports_free()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.timeout)
    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="cutover-guard-")
    upstream = compare.start_upstream(work)
    figures = {}
    try:
        if args.only != "memory":
            cut, cut_total = instructions("cutover", work, args.requests)
            ngx, ngx_total = instructions("nginx", work, args.requests)
            print(f"{'instructions per request (callgrind)':<46}{'cutover':>9}{'nginx':>10}{'ratio':>8}")
            rows = [(f"{name} ({count})", c, g) for (name, count, _), c, g in zip(parts(args.requests, 0), cut, ngx)]
            for name, c, g in rows + [("weighted total", cut_total, ngx_total)]:
                print(f"  {name:<44}{c:>9,.0f}{g:>10,.0f}{c / g:>8.3f}")
            figures["instructions_ratio"] = (cut_total / ngx_total, f"{cut_total / ngx_total:.3f}")
        if args.only != "instructions":
            raise_fd_limit(CLIENTS + 1000)
            cut = peak_rss("cutover-realistic", work, 3)
            ngx = peak_rss("nginx", work, 1)
            print(f"peak RSS, {CLIENTS:,} clients each making one request and staying: "
                  f"cutover {cut:.1f} MiB (lowest of 3), nginx {ngx:.1f} MiB ({cut / ngx:.2f})")
            figures["peak_rss_10k_mib"] = (cut, f"{cut:.1f} MiB")
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as e:
        sys.exit(f"guard failed: {e}")
    finally:
        upstream.stop()
        signal.alarm(0)
    print(f"guard took {time.monotonic() - start:.0f} s")
    over = []
    for key, (value, text) in figures.items():
        limit = budget[key]
        ok = value <= limit
        print(f"{key}: {text}, budget {limit:g} ({os.path.relpath(args.budget)}): {'ok' if ok else 'OVER'}")
        if not ok:
            over.append(f"{key} {text} is over its budget of {limit:g}")
    if over:
        sys.exit("guard failed: " + "; ".join(over))


if __name__ == "__main__":
    main()
