#!/usr/bin/env python3
"""Response compression: CPU per request and throughput for a 20 KiB JSON
response through cutover with `compress = true` (gzip, brotli, zstd) and
without, and through nginx with `gzip on` and off, at the same gzip level.

    cargo build --release && python3 benches/compress.py [--seconds S] [--rounds N]

Method (as in compare.py, whose helpers this uses): an nginx upstream (1
worker) serves the same 20 KiB JSON file uncompressed; each proxy in turn
(one worker each) on 127.0.0.1:18081, loaded by `wrk -t1 -c64` with
`Accept-Encoding` set, 2 s warm-up, then S seconds measured; CPU per
request is the proxy's utime + stime over the requests wrk completed.
Runs are interleaved in N rounds, and the median of the rounds is kept.
Each response is checked to carry the expected `Content-Encoding` first.
Loopback only; about (2 + S) × 7 × N seconds.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import PROXY, UP_BLUE, ADMIN, Server, cpu_seconds, nginx_head, to_ms  # noqa: E402

GZIP_LEVEL = 4  # cutover's fixed gzip level; nginx is set to the same


def body_json():
    items = [{"id": i, "name": f"item-{i}", "price": i * 7 % 1000 / 10, "tags": ["a", "b", str(i % 13)],
              "in_stock": i % 3 != 0} for i in range(240)]
    return json.dumps({"items": items}, indent=1).encode()[: 20 * 1024]


def upstream_conf(work):
    conf = nginx_head(work, "upstream") + f"""
    server {{ listen 127.0.0.1:{UP_BLUE};
             location / {{ root {work}; default_type application/json; rewrite ^ /data.json break; }} }}
}}
"""
    path = os.path.join(work, "upstream.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def nginx_conf(work, gzip):
    g = (f"gzip on; gzip_types application/json; gzip_comp_level {GZIP_LEVEL}; "
         "gzip_min_length 1024; gzip_vary on; gzip_proxied any;") if gzip else "gzip off;"
    conf = "\ndaemon off;\nmaster_process on;" + nginx_head(work, "proxy") + f"""
    upstream app {{ server 127.0.0.1:{UP_BLUE}; keepalive 128; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{PROXY};
        {g}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"""
    path = os.path.join(work, f"nginx-{'gzip' if gzip else 'plain'}.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def cutover_conf(work, compress):
    conf = f"""
[server]
listen = ["127.0.0.1:{PROXY}"]
workers = 1
[limits]
client_idle_timeout = "300s"
[admin]
listen = "127.0.0.1:{ADMIN}"
[apps.bench]
sticky = "none"
compress = {"true" if compress else "false"}
[apps.bench.blue]
servers = ["127.0.0.1:{UP_BLUE}"]
[apps.bench.green]
servers = ["127.0.0.1:{UP_BLUE}"]
"""
    path = os.path.join(work, f"cutover-{compress}.toml")
    with open(path, "w") as f:
        f.write(conf)
    return path


def wrk(conns, secs, ae):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", "--timeout", "5s",
            "-H", f"Accept-Encoding: {ae}", f"http://127.0.0.1:{PROXY}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    n = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        sys.exit(f"wrk saw errors:\n{out}")
    return rps, n, to_ms(m.group(1)) if m else float("nan")


def check(ae, want):
    req = urllib.request.Request(f"http://127.0.0.1:{PROXY}/", headers={"Accept-Encoding": ae})
    with urllib.request.urlopen(req, timeout=5) as r:
        got = r.headers.get("Content-Encoding")
        size = len(r.read())
    if got != want:
        sys.exit(f"expected Content-Encoding {want}, got {got}")
    return size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--binary", default=compare.CUTOVER)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="cutover-compress-")
    os.chmod(work, 0o755)
    body = body_json()
    with open(os.path.join(work, "data.json"), "wb") as f:
        f.write(body)
    os.chmod(os.path.join(work, "data.json"), 0o644)
    # (label, start argv, Accept-Encoding sent, Content-Encoding expected)
    runs = [
        ("cutover, compress off", [args.binary, "run", "-c", cutover_conf(work, False)], "gzip", None),
        ("cutover, gzip", [args.binary, "run", "-c", cutover_conf(work, True)], "gzip", "gzip"),
        ("cutover, br", [args.binary, "run", "-c", cutover_conf(work, True)], "br", "br"),
        ("cutover, zstd", [args.binary, "run", "-c", cutover_conf(work, True)], "zstd", "zstd"),
        ("nginx, gzip off", ["nginx", "-c", nginx_conf(work, False), "-p", work], "gzip", None),
        ("nginx, gzip on", ["nginx", "-c", nginx_conf(work, True), "-p", work], "gzip", "gzip"),
    ]
    results = {label: [] for label, *_ in runs}
    sizes = {}
    upstream = Server("upstream", ["nginx", "-c", upstream_conf(work), "-p", work, "-g", "daemon off;"], UP_BLUE)
    try:
        for rnd in range(args.rounds):
            for label, argv, ae, want in runs:
                s = Server(label, argv, PROXY)
                try:
                    sizes[label] = check(ae, want)
                    wrk(64, 2, ae)
                    pids = s.pids()
                    before = cpu_seconds(pids)
                    rps, n, p99 = wrk(64, args.seconds, ae)
                    cpu = (cpu_seconds(pids) - before) * 1e6 / n
                    results[label].append((rps, cpu, p99))
                    print(f"round {rnd + 1} {label}: {rps:.0f} req/s, {cpu:.1f} µs CPU/req, p99 {p99:.2f} ms",
                          file=sys.stderr)
                finally:
                    s.stop()
                    compare.wait_port_free(PROXY)
    finally:
        upstream.stop()
    print(f"\n{len(body)} B JSON body; wrk -t1 -c64, {args.seconds}s × {args.rounds} rounds, median\n")
    print("| proxy | bytes sent | req/s | CPU µs/req | p99 ms |")
    print("|---|---|---|---|---|")
    for label, *_ in runs:
        r = results[label]
        med = lambda i: statistics.median(x[i] for x in r)  # noqa: E731
        print(f"| {label} | {sizes[label]} | {med(0):,.0f} | {med(1):.1f} | {med(2):.2f} |")


if __name__ == "__main__":
    main()
