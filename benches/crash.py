#!/usr/bin/env python3
"""Crash durability: SIGKILL at random moments during admin changes.

    python3 benches/crash.py [--changes 1000] [--binary target/release/cutover] [--seed N]

Starts two upstreams (tiny HTTP servers in this process, so both colours
stay healthy) and cutover with a state file, then makes `--changes`
changes through the admin API — flips, shifts and rule edits, picked at
random — and kills cutover with SIGKILL at random moments: about one
change in ten has a kill fired a random 0–3 ms after the request left,
so it lands before, during or after the change is written. After each
kill the script checks that the state file parses, restarts cutover on
the same file, and compares the state it reports (live colour, split,
rules) with the last acknowledged change — or with the change that was
in flight when the kill came, which may or may not have been made
durable before its answer. Anything else is a lost or invented change.

Prints `N/N changes durable` and exits 1 on any mismatch. Loopback only;
every wait is bounded.
"""

import argparse
import http.client
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream():
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def admin(port, method, path, body=None, timeout=5.0):
    """(status, parsed JSON or None); (0, None) when the daemon is gone."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, None
    except (OSError, http.client.HTTPException):
        return 0, None


class Daemon:
    def __init__(self, binary, config, admin_port):
        self.binary, self.config, self.admin_port = binary, config, admin_port
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "run", "-c", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if admin(self.admin_port, "GET", "/healthz", timeout=0.5)[0] == 200:
                return
            if self.proc.poll() is not None:
                sys.exit("cutover exited at start")
            time.sleep(0.01)
        sys.exit("cutover did not start within 10 s")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def observed(port):
    """What the daemon reports for app `shop`: live colour, split, and the
    names of its rules."""
    status, body = admin(port, "GET", "/v1/status")
    if status != 200:
        return None
    apps = body["apps"]
    app = next(a for a in apps if a["name"] == "shop") if isinstance(apps, list) else apps["shop"]
    names = tuple(sorted(r["name"] for r in app.get("rules", [])))
    return (app["live"], float(app["standby_percent"]), names)


def random_change(rng, n):
    """A change and the state it makes of a state."""
    kind = rng.choice(["flip", "shift", "shift", "rules", "rules"])
    if kind == "flip":
        other = {"blue": "green", "green": "blue"}
        return "POST", "/v1/apps/shop/flip", {}, lambda s: (other[s[0]], 0.0, s[2])
    if kind == "shift":
        p = rng.choice([0, 1, 5, 12.5, 25, 50, 100])
        return "POST", "/v1/apps/shop/shift", {"percent": p}, lambda s: (s[0], float(p), s[2])
    rules = [{"name": f"r{n}-{i}", "to": rng.choice(["blue", "green"]),
              "header": {"name": "x-beta", "value": str(i)}} for i in range(rng.randint(0, 3))]
    names = tuple(sorted(r["name"] for r in rules))
    return "PUT", "/v1/apps/shop/rules", rules, lambda s: (s[0], s[1], names)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "cutover"))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--kill-every", type=int, default=10, help="about one change in this many has a kill")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: cargo build --release")
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="cutover-crash-")
    state_file = os.path.join(work, "state.json")
    proxy_port, admin_port = free_port(), free_port()
    blue, green = upstream(), upstream()
    config = os.path.join(work, "cutover.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = ["127.0.0.1:{proxy_port}"]
workers = 1
shutdown_timeout = "1s"
[admin]
listen = "127.0.0.1:{admin_port}"
[state]
file = "{state_file}"
[apps.shop]
[apps.shop.blue]
servers = ["127.0.0.1:{blue}"]
[apps.shop.green]
servers = ["127.0.0.1:{green}"]
""")
    d = Daemon(args.binary, config, admin_port)
    d.start()
    state = observed(admin_port)
    durable, kills, refused, bad, codes, in_flight = 0, 0, 0, [], {}, 0
    try:
        for n in range(args.changes):
            method, path, body, apply = random_change(rng, n)
            kill = rng.randrange(args.kill_every) == 0
            if kill:
                threading.Timer(rng.uniform(0, 0.003), d.kill).start()
            status, _ = admin(admin_port, method, path, body)
            if kill:
                time.sleep(0.005)
                d.kill()
                kills += 1
                try:
                    with open(state_file) as f:
                        json.load(f)
                except FileNotFoundError:
                    pass  # killed before the first change was written
                except ValueError as e:
                    bad.append(f"change {n}: the state file does not parse after a kill: {e}")
                    break
                d.start()
            now = observed(admin_port)
            want = apply(state)
            if 200 <= status < 300:
                ok = now == want  # acknowledged: it must be there
            elif status == 0:
                in_flight += 1
                ok = now in (state, want)  # in flight at the kill: either
            else:
                refused += 1
                codes[status] = codes.get(status, 0) + 1
                ok = now == state  # refused: nothing changed
            if ok:
                durable += 1
            else:
                bad.append(f"change {n} ({method} {path}, answer {status}, kill {kill}): "
                           f"before {state}, want {want}, found {now}")
            state = now
    finally:
        d.kill()
    print(f"{durable - len(bad)}/{args.changes} changes durable "
          f"({kills} kills, {in_flight} of them with the change in flight; {refused} refused by the daemon, by status {codes}; seed {args.seed})")
    for b in bad[:20]:
        print(b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
