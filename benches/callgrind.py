#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind.

Instruction counts do not move with the machine's load, so small changes
to the hot path can be compared where wall-clock numbers are noise.

    python3 benches/callgrind.py [--config minimal|realistic] [--requests N]
    python3 benches/callgrind.py --proxy nginx      # the same harness, nginx
    python3 benches/callgrind.py --flips            # and a phase with flips
    python3 benches/callgrind.py --proxy hyper-floor [--floor-features N]
    python3 benches/callgrind.py --cache            # and simulated cache misses
    python3 benches/callgrind.py --access-log json  # with the access log on (nginx: combined)
    python3 benches/callgrind.py --rate-limit       # with a rate limit that refuses nothing
    python3 benches/callgrind.py --no-request-ids   # request ids off (nginx: no $request_id)
    python3 benches/callgrind.py --cache --top 15   # and the functions that cost the most

Starts an nginx upstream, runs the proxy (`cutover run`, or nginx with
`master_process off`, or HAProxy) under `valgrind --tool=callgrind`, sends
N warm-up requests and dumps the counters, then 2N more keep-alive
requests over 4 connections and dumps again. Each dump holds the costs
since the one before it (callgrind zeroes its counters on a dump), so the
second dump's Ir / 2N is the instructions of one request with start-up
and warm-up excluded. With `--flips`, a third phase sends 2N more while
the admin API flips every 100 ms, and reports what a flip adds (the admin
request itself included, and the state file written: with `--flips` the
config gets a `[state] file`, and 110 flips during warm-up fill its
history to the 100 entries it keeps) — at a real flip rate against a real request rate
that is the storm's in-process cost, free of the machine's noise. Needs valgrind and nginx (benches/compare.sh
installs nginx and HAProxy; `apt-get install valgrind`).

With `--cache`, callgrind also simulates the caches and branch predictor
(`--cache-sim=yes --branch-sim=yes`: 32 KiB L1 instruction and data
caches) and the report adds L1 misses and mispredicted branches per
request: how much code and data a request touches, which decides how
fast its instructions run when other processes share the cores.

With `--rate-limit`, the benchmarked app (cutover's `bench` or `shop`)
gets a `rate_limit` by client address at a rate no request reaches
(RATE_LIMIT), and nginx the same limit (`limit_req_zone
$binary_remote_addr` + `limit_req ... nodelay`): the check's cost, every
request looked up and counted, none refused.
"""

import argparse
import contextlib
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

# A browser's GET for the realistic config (compare.BROWSER: a user agent
# the mobile regex checks, a sticky cookie).
REQUEST = ("GET / HTTP/1.1\r\nHost: shop.example.com\r\n"
           + "".join(h + "\r\n" for h in compare.BROWSER) + "\r\n").encode()

# `--rate-limit`: the highest rate and burst the config takes, by the one
# client address every request comes from.
RATE_LIMIT = compare.RateLimit("client_ip", "1000000/s", 1000000, 100000)


def client(n, request, errors):
    """`n` requests, one after the other, on one keep-alive connection;
    each answer must be a 200 with the upstream's "hello". What went wrong
    is added to `errors`."""
    try:
        s = socket.create_connection(("127.0.0.1", compare.PROXY), timeout=120)
        buf = b""
        for _ in range(n):
            s.sendall(request)
            while b"hello" not in buf:
                got = s.recv(65536)
                if not got:
                    raise RuntimeError("the proxy closed the connection")
                buf += got
            answer, buf = buf.split(b"hello", 1)
            if not answer.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"not a 200: {answer[:40]!r}")
        s.close()
    except Exception as e:
        errors.append(e)


def send(n, conns=4, request=REQUEST):
    """`n` requests over `conns` keep-alive connections at once."""
    errors = []
    threads = [threading.Thread(target=client, args=(n // conns, request, errors), daemon=True)
               for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {conns} connections failed: {errors[0]}")


@contextlib.contextmanager
def under_callgrind(argv, out, sim=()):
    """The proxy `argv` run by callgrind (its counters in `out`.N), once it
    listens; stopped on leaving, whatever happened."""
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *sim, *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        compare.wait_port(compare.PROXY, timeout=60)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dump_files(out_file, part):
    """The paths of dump `part` (one per process that callgrind followed)."""
    d = os.path.dirname(out_file)
    return [os.path.join(d, n) for n in os.listdir(d)
            if n.startswith(os.path.basename(out_file)) and n.endswith(f".{part}")]


def dump_ir(out_file, pid, part, events=None):
    """Dump the running callgrind's counters (which zeroes them) and read
    the Ir of that dump: the cost since the previous one. A process that
    forks (nginx, HAProxy) dumps for each pid; all are summed. With
    `events`, a dict is filled with every event's total."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    for _ in range(100):
        paths = dump_files(out_file, part)
        if paths:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"callgrind wrote no dump part {part}")
    time.sleep(0.5)  # let the writer finish
    total = 0
    for path in paths:
        with open(path) as f:
            kinds = []
            for line in f:
                if line.startswith("events:"):
                    kinds = line.split()[1:]
                if line.startswith("summary:"):
                    counts = [int(x) for x in line.split()[1:]]
                    total += counts[0]
                    if events is not None:
                        for k, v in zip(kinds, counts):
                            events[k] = events.get(k, 0) + v
    return total


def self_costs(out_file, part):
    """Each function's own cost (inlined code counted where it landed) in
    dump `part`, every event: {name: [Ir, ...]}, and the event names. A
    call's inclusive cost, the line after `calls=`, is not the caller's
    own and is skipped; names are given once and then by their number."""
    costs, kinds = {}, []
    for path in dump_files(out_file, part):
        names, fn, skip = {}, None, False
        with open(path) as f:
            for line in f:
                if line.startswith("events:"):
                    kinds = line.split()[1:]
                elif line.startswith(("fn=", "cfn=")):
                    key, _, text = line.split("=", 1)[1].rstrip("\n").partition(" ")
                    if text:
                        names[key] = text
                    if line.startswith("fn="):
                        fn = names[key]
                elif line.startswith("calls="):
                    skip = True
                elif line[:1].isdigit() or line[:1] in "+-*":
                    if skip:
                        skip = False
                    elif fn is not None:
                        row = costs.setdefault(fn, [0] * len(kinds))
                        for i, v in enumerate(line.split()[1:1 + len(kinds)]):
                            row[i] += int(v)
    return costs, kinds


def print_top(out_file, part, requests, n):
    """The `n` functions with the most instructions of their own per
    request in dump `part`, and with the cache simulated, the `n` with the
    most L1 instruction-cache misses."""
    costs, kinds = self_costs(out_file, part)
    for event, label in (("Ir", "instructions"), ("I1mr", "L1i misses")):
        if event not in kinds:
            continue
        i = kinds.index(event)
        print(f"the {n} functions with the most {label} of their own, per request:")
        for fn, row in sorted(costs.items(), key=lambda kv: -kv[1][i])[:n]:
            print(f"  {row[i] / requests:8.0f}  {fn[:110]}")


def flip_storm(stop, flips):
    """Flip every 100 ms until `stop` is set; with `stop` None, once."""
    while stop is None or not stop.is_set():
        compare.post_flip(compare.ADMIN, timeout=60)  # under valgrind
        flips[0] += 1
        if stop is None:
            return
        stop.wait(0.1)


def hyper_floor_binary():
    """Build benches/hyper_floor.rs (the thinnest hyper proxy) and return
    its path."""
    subprocess.run(["cargo", "build", "--release", "--example", "hyper_floor"],
                   cwd=compare.ROOT, check=True)
    return os.path.join(compare.TARGET, "release", "examples", "hyper_floor")


def proxy_argv(kind, config, work, floor_features=0, state=False, access_log=None, h2_port=None,
               rate_limit=None, request_id=True):
    """The command line of the proxy to measure; nginx with `h2_port` also
    speaks h2c there (cutover does on its one port); with `rate_limit` (a
    `compare.RateLimit`), the benchmarked app limited by it; without
    `request_id`, no request id either way in cutover or nginx."""
    if kind == "hyper-floor":
        return [hyper_floor_binary(), f"127.0.0.1:{compare.PROXY}",
                f"127.0.0.1:{compare.UP_BLUE}", str(floor_features)]
    if kind == "cutover":
        conf = (compare.cutover_minimal_conf(work) if config == "minimal"
                else compare.cutover_realistic_conf(work))
        if rate_limit:
            compare.with_rate_limit(conf, "bench" if config == "minimal" else "shop", rate_limit)
        if not request_id:
            compare.without_request_ids(conf)
        if state:  # a state file, written (and fsynced) at every change
            with open(conf, "a") as f:
                f.write(f'\n[state]\nfile = "{os.path.join(work, "cutover.state.json")}"\n')
        if access_log:
            with open(conf, "a") as f:
                f.write(f'\n[log]\naccess = "{os.path.join(work, "access.log")}"\n'
                        f'access_format = "{access_log}"\n')
        return [compare.CUTOVER, "run", "-c", conf]
    if kind == "nginx":
        # One process: the master would otherwise fork the worker.
        path = compare.nginx_proxy_conf(work, h2_port=h2_port, rate_limit=rate_limit,
                                        request_id=request_id)
        with open(path) as f:
            text = f.read().replace("master_process on;", "master_process off;")
        if access_log:  # nginx writes combined (its default), unbuffered
            text = text.replace("access_log off;", f"access_log {work}/access.log combined;")
        with open(path, "w") as f:
            f.write(text)
        return ["nginx", "-c", path, "-p", work]
    # valgrind keeps a few descriptors for itself: ask for fewer.
    path = compare.haproxy_conf(work)
    with open(path) as f:
        text = f.read().replace("maxconn 9990", "maxconn 1000")
    with open(path, "w") as f:
        f.write(text)
    return ["haproxy", "-db", "-f", path]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", choices=["cutover", "nginx", "haproxy", "hyper-floor"],
                    default="cutover")
    ap.add_argument("--floor-features", type=int, default=0,
                    help="hyper-floor: the pieces of cutover to add (bits; see benches/hyper_floor.rs)")
    ap.add_argument("--config", choices=["minimal", "realistic"], default="minimal",
                    help="cutover's config")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--flips", action="store_true", help="cutover: also measure a flip storm")
    ap.add_argument("--cache", action="store_true",
                    help="also simulate the L1 caches and branch prediction")
    ap.add_argument("--access-log", choices=["json", "combined"],
                    help="with the access log on, to a file (nginx: combined)")
    ap.add_argument("--rate-limit", action="store_true",
                    help="with a rate limit by client address that refuses nothing")
    ap.add_argument("--no-request-ids", action="store_true",
                    help="request ids off (cutover's request_id = \"off\"; nginx without $request_id)")
    ap.add_argument("--top", type=int, metavar="N", default=0,
                    help="also list the N functions with the most instructions (and with --cache, "
                         "L1i misses) of their own per request")
    ap.add_argument("--binary", metavar="PATH",
                    help="cutover: the binary (default target/release/cutover; "
                         "target/pgo/cutover for the profile-guided build)")
    args = ap.parse_args()
    if args.binary:
        compare.CUTOVER = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="cutover-callgrind-")
    upstream = compare.start_upstream(work)
    out = os.path.join(work, "callgrind.out")
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if args.cache else []
    argv = proxy_argv(args.proxy, args.config, work, args.floor_features,
                      state=args.flips, access_log=args.access_log,
                      rate_limit=RATE_LIMIT if args.rate_limit else None,
                      request_id=not args.no_request_ids)
    try:
        with under_callgrind(argv, out, sim) as proc:
            measure(args, out, proc)
    finally:
        upstream.stop()


def measure(args, out, proc):
    """The phases of the measurement, the proxy running (`proc`)."""
    n = args.requests
    send(n)
    if args.flips and args.proxy == "cutover":
        # Fill the state file's history to its limit (100 entries), as
        # on a proxy that has been flipped for a while.
        for _ in range(110):
            flip_storm(None, [0])
    dump_ir(out, proc.pid, 1)
    send(2 * n)
    events = {}
    measured = dump_ir(out, proc.pid, 2, events)
    name = {"cutover": f"cutover, {args.config} config"
                       + (f", {args.access_log} access log" if args.access_log else ""),
            "hyper-floor": f"hyper floor, features {args.floor_features}"}.get(args.proxy, args.proxy)
    if args.rate_limit:
        name += ", rate limit on"
    if args.no_request_ids:
        name += ", request ids off"
    print(f"profile: {out}*.2  (callgrind_annotate)", file=sys.stderr)
    print(f"{name}: {measured / (2 * n):.0f} instructions per request "
          f"(callgrind, {2 * n} requests after {n} warm-up)", flush=True)
    if args.cache:
        per = {k: v / (2 * n) for k, v in events.items()}
        print(f"per request: L1i misses {per.get('I1mr', 0):.0f}, L1d misses "
              f"{per.get('D1mr', 0) + per.get('D1mw', 0):.0f} (read + write), mispredicted "
              f"branches {per.get('Bcm', 0):.0f} + {per.get('Bim', 0):.0f} (conditional + indirect)",
              flush=True)
    if args.top:
        print_top(out, 2, 2 * n, args.top)
    if args.flips and args.proxy == "cutover":
        stop = threading.Event()
        flips = [0]
        flipper = threading.Thread(target=flip_storm, args=(stop, flips))
        flipper.start()
        send(2 * n)
        stop.set()
        flipper.join()
        stormy = dump_ir(out, proc.pid, 3)
        print(f"with a flip every 100 ms: {stormy / (2 * n):.0f} instructions per request; "
              f"{flips[0]} flips, {(stormy - measured) / max(1, flips[0]):.0f} instructions each")


if __name__ == "__main__":
    main()
