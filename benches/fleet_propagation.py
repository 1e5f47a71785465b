#!/usr/bin/env python3
"""How long a flip takes to reach a whole fleet.

Starts a real etcd (Debian's etcd-server) on loopback, N cutover instances
sharing their state through it, and two upstreams answering "blue" and
"green". Then, FLIPS times: flip on the first instance through its admin
API, and time until every instance *serves* the new colour — each checked
by proxied requests sent back to back on a kept-alive connection, not by
its report. A flip's figure is from the start of the admin call to the
last instance's first answer from the new colour.

    python3 benches/fleet_propagation.py [--binary target/release/cutover]
        [--instances 5] [--flips 100] [--json]
"""

import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=20.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


def upstream(name):
    body = name.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def start_etcd(work):
    client, peer = free_port(), free_port()
    url, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        ["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
         "--initial-cluster", f"bench={purl}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(client)
    return proc, url


def start_instance(binary, work, name, etcd, blue, green):
    port, admin = free_port(), free_port()
    folder = os.path.join(work, name)
    os.makedirs(folder)
    with open(os.path.join(folder, "cutover.toml"), "w") as f:
        f.write(f"""
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[state]
backend = "etcd"
file = "state.json"
endpoints = ["{etcd}"]
cluster = "bench"
instance = "{name}"
[apps.web]
[apps.web.blue]
servers = ["127.0.0.1:{blue}"]
[apps.web.green]
servers = ["127.0.0.1:{green}"]
""")
    log = open(os.path.join(folder, "log"), "w")
    proc = subprocess.Popen([binary, "run", "-c", os.path.join(folder, "cutover.toml")],
                            stdout=subprocess.DEVNULL, stderr=log)
    wait_port(admin)
    return {"name": name, "proc": proc, "port": port, "admin": admin}


def admin(inst, method, path):
    c = http.client.HTTPConnection("127.0.0.1", inst["admin"], timeout=10)
    headers = {"content-type": "application/json"} if method != "GET" else {}
    c.request(method, path, body=b"{}" if method != "GET" else None, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"{method} {path} on {inst['name']}: {r.status} {body!r}")
    return json.loads(body)


def wait_connected(inst, limit=20.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if admin(inst, "GET", "/v1/status").get("fleet", {}).get("connected"):
            return
        time.sleep(0.05)
    raise SystemExit(f"{inst['name']} did not connect to etcd")


def served_at(inst, colour, start, out, i):
    """Send requests until `colour` answers; the time since `start`."""
    c = http.client.HTTPConnection("127.0.0.1", inst["port"], timeout=10)
    while True:
        c.request("GET", "/")
        body = c.getresponse().read().decode()
        if body == colour:
            out[i] = time.perf_counter() - start
            c.close()
            return
        if time.perf_counter() - start > 10:
            raise SystemExit(f"{inst['name']} did not serve {colour} within 10s")


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/cutover")
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--flips", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not shutil.which("etcd"):
        raise SystemExit("etcd is needed (Debian's etcd-server package)")
    work = tempfile.mkdtemp(prefix="cutover-fleet-")
    procs = []
    try:
        etcd, url = start_etcd(work)
        procs.append(etcd)
        blue, green = upstream("blue"), upstream("green")
        fleet = []
        for n in range(args.instances):
            inst = start_instance(args.binary, work, f"i{n}", url, blue, green)
            procs.append(inst["proc"])
            fleet.append(inst)
        for inst in fleet:
            wait_connected(inst)
        last, each = [], []
        colour = admin(fleet[0], "GET", "/v1/status")["apps"]["web"]["live"]
        for _ in range(args.flips):
            colour = "green" if colour == "blue" else "blue"
            times = [None] * len(fleet)
            start = time.perf_counter()
            pollers = [threading.Thread(target=served_at, args=(inst, colour, start, times, i))
                       for i, inst in enumerate(fleet)]
            admin(fleet[0], "POST", "/v1/apps/web/flip")
            for t in pollers:
                t.start()
            for t in pollers:
                t.join()
            last.append(max(times))
            each.extend(times)
            time.sleep(0.05)
        ms = lambda v: round(v * 1000, 1)
        result = {
            "instances": args.instances,
            "flips": args.flips,
            "all_serving_ms": {"p50": ms(statistics.median(last)),
                               "p99": ms(percentile(last, 99)),
                               "max": ms(max(last))},
            "each_instance_ms": {"p50": ms(statistics.median(each)),
                                 "p99": ms(percentile(each, 99))},
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            a, e = result["all_serving_ms"], result["each_instance_ms"]
            print(f"{args.flips} flips on one of {args.instances} instances (etcd on loopback)")
            print("| measured from the flip call | p50 | p99 | max |")
            print("|---|---|---|---|")
            print(f"| until all {args.instances} serve it | {a['p50']} ms | {a['p99']} ms | {a['max']} ms |")
            print(f"| until one instance serves it | {e['p50']} ms | {e['p99']} ms | |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
