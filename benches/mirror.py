#!/usr/bin/env python3
"""Shadow traffic against a standby that never answers in time: the live
requests' latency with mirroring off and on, side by side.

    cargo build --release && python3 benches/mirror.py [--seconds S] [--rounds N]
                                                       [--binary PATH]

Method (compare.py's helpers and its side-by-side way): an nginx upstream
(1 worker, `return 200 "hello"`) is blue, the live colour, for two
cutovers (one worker each) started at the same time; green, the standby,
is a Python asyncio server that answers every request after 5 s. One
cutover has no mirror; the other copies live requests to green. Each is
loaded by its own `wrk -t1 -c64` in the same seconds, in N rounds of
S seconds after a 2 s warm-up: whatever the machine does falls on both
at once, so the per-round ratios (mirror on ÷ off) of p99, p50,
requests/s and CPU per request hold still where the absolute figures
wander. Four pairs:

- `percent = 100` with the default `max_in_flight` (64) and `timeout`
  (2 s), wrk as fast as it goes: nearly every copy is dropped (and
  counted), 64 hang at a time;
- the same, wrk paced (each connection waits 50 ms between requests:
  about 1,250 requests/s a side, the cores not full);
- `percent = 10` with `max_in_flight = 5000`, as fast as it goes:
  thousands of copies hang on green at once, each on a connection of its
  own (green holds every one it gets), opened and closed by cutover —
  work the mirroring side does on top, on two shared cores that are full;
- `percent = 100` with `max_in_flight = 5000`, wrk paced: a copy of every
  request hangs, ~2,500 at a time, each on a connection of its own.

Each pair ends with the mirroring side's `cutover_mirror_total` counts,
to show the copies were made and hung. nginx is needed (apt-get install
nginx-light). Loopback only; about 4 × N × (2 + S) seconds plus starts.
"""

import argparse
import asyncio
import os
import re
import resource
import statistics
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import ADMIN, PROXY, SIDE_ADMIN, SIDE_PROXY, Server, log, upstreams_for  # noqa: E402

SLEEPER = 18084
SLEEP_S = 5


async def sleeper(port, delay):
    """Read each request (head and `Content-Length` body), answer 200 after
    `delay` seconds; connections the proxy gives up on just close."""

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ngreen")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def cutover_conf(work, name, port, admin, mirror):
    conf = f"""
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[limits]
client_idle_timeout = "300s"
[admin]
listen = "127.0.0.1:{admin}"
[apps.bench]
sticky = "none"
{mirror}
[apps.bench.blue]
servers = ["127.0.0.1:{upstreams_for(port)[0]}"]
[apps.bench.green]
servers = ["127.0.0.1:{SLEEPER}"]
"""
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(conf)
    return path


def mirror_counts(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = {}
    for m in re.finditer(r'^cutover_mirror_total\{app="bench",outcome="(\w+)"\} (\d+)', text, re.M):
        counts[m.group(1)] = int(m.group(2))
    return counts


def spread(xs):
    """mean ± standard error (min–max)."""
    mean = statistics.mean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return f"{mean:.3f} ± {se:.3f} ({min(xs):.2f}–{max(xs):.2f})"


def run_pair(work, binary, label, mirror, script, secs, rounds):
    off = Server("off", [binary, "run", "-c", cutover_conf(work, "off", PROXY, ADMIN, "")], PROXY)
    try:
        on = Server("on", [binary, "run", "-c", cutover_conf(work, "on", SIDE_PROXY, SIDE_ADMIN, mirror)],
                    SIDE_PROXY)
    except BaseException:
        off.stop()
        raise
    per = {"p99": [], "p50": [], "rps": [], "cpu": []}
    absolute = {"off": [], "on": []}
    errors = 0
    try:
        for i in range(rounds):
            log(f"{label}: round {i + 1} of {rounds}")
            for seconds, measured in ((2, False), (secs, True)):
                pids = {"off": off.pids(), "on": on.pids()}
                before = {k: compare.cpu_seconds(v) for k, v in pids.items()}
                res = compare.wrk_at_once({"off": PROXY, "on": SIDE_PROXY}, 64, seconds, script=script)
                if not measured:
                    continue
                cpu = {k: (compare.cpu_seconds(pids[k]) - before[k]) * 1e6 / max(res[k]["requests"], 1)
                       for k in pids}
                per["p99"].append(res["on"]["p99"] / res["off"]["p99"])
                per["p50"].append(res["on"]["p50"] / res["off"]["p50"])
                per["rps"].append(res["on"]["rps"] / res["off"]["rps"])
                per["cpu"].append(cpu["on"] / cpu["off"])
                for k in absolute:
                    absolute[k].append((res[k]["p50"], res[k]["p99"], res[k]["rps"]))
                errors += res["off"]["errors"] + res["on"]["errors"]
        counts = mirror_counts(SIDE_ADMIN)
    finally:
        on.stop()
        off.stop()
        compare.wait_port_free(PROXY)
        compare.wait_port_free(SIDE_PROXY)
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in absolute.items()}
    return per, med, counts, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--binary", default=compare.CUTOVER)
    ap.add_argument("--sleeper", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sleeper:
        asyncio.run(sleeper(args.sleeper, SLEEP_S))
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="cutover-mirror-")
    os.chmod(work, 0o755)
    paced = os.path.join(work, "paced.lua")
    with open(paced, "w") as f:
        f.write("function delay()\n  return 50\nend\n")
    pairs = [
        ("percent 100, max_in_flight 64", "[apps.bench.mirror]\npercent = 100", None),
        ("percent 100, max_in_flight 64, paced", "[apps.bench.mirror]\npercent = 100", paced),
        ("percent 10, max_in_flight 5000", "[apps.bench.mirror]\npercent = 10\nmax_in_flight = 5000", None),
        ("percent 100, max_in_flight 5000, paced", "[apps.bench.mirror]\npercent = 100\nmax_in_flight = 5000",
         paced),
    ]
    upstreams = compare.start_upstreams(work)
    green = Server("green", [sys.executable, os.path.abspath(__file__), "--sleeper", str(SLEEPER)], SLEEPER)
    results = []
    try:
        for label, mirror, script in pairs:
            results.append((label, *run_pair(work, args.binary, label, mirror, script, args.seconds,
                                             args.rounds)))
    finally:
        green.stop()
        for upstream in upstreams:
            upstream.stop()
    print(f"\nwrk -t1 -c64 on each side, {args.rounds} rounds of {args.seconds} s; "
          f"green answers after {SLEEP_S} s\n")
    print("| mirror on | p99 on ÷ off | p50 on ÷ off | req/s on ÷ off | CPU/req on ÷ off "
          "| p50 / p99 ms off, on (medians) | req/s off, on | copies: same / error / dropped | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, per, med, counts, errors in results:
        print(f"| {label} | {spread(per['p99'])} | {spread(per['p50'])} | {spread(per['rps'])} "
              f"| {spread(per['cpu'])} | {med['off'][0]:.2f} / {med['off'][1]:.2f}, "
              f"{med['on'][0]:.2f} / {med['on'][1]:.2f} | {med['off'][2]:,.0f}, {med['on'][2]:,.0f} "
              f"| {counts.get('same', 0)} / {counts.get('error', 0)} / {counts.get('dropped', 0)} | {errors} |")


if __name__ == "__main__":
    main()
