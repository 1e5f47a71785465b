#!/usr/bin/env python3
"""Hostile clients against cutover and nginx, with a probe beside them.

    python3 benches/abuse.py [--binary target/release/cutover] [--seconds 10]
                             [--proxies cutover,nginx]

Starts an upstream (asyncio, in a process of its own; it counts the
requests it gets), then each proxy in turn in front of it (nginx with the
same limits where it has them; skipped if it is not installed), and
against each, in turn and each for `--seconds`:

- slowloris: 1,000 connections each dribbling a request head, a byte a
  second;
- slow body: 200 uploads announcing 1 MiB and sending a byte a second;
- slow readers: 200 clients asking for a 1 MiB response with a tiny
  receive window, reading nothing;
- an idle flood beyond `max_connections` (here 1,500): 2,000 connections
  that send nothing;
- HTTP/2 (raw frames, the `h2` package's `hyperframe` and `hpack`):
  rapid reset (HEADERS then RST_STREAM, 5,000 streams), a CONTINUATION
  flood (one HEADERS without END_HEADERS, then CONTINUATION frames
  without end), a SETTINGS flood and a PING flood (100,000 frames each),
  and 1,000 streams opened at once against the advertised limit.

A probe, in a process of its own (the attacks' event loop would delay
it), sends one GET every 50 ms (20/s) on a new connection throughout, to
an app of its own (`probe.test`) whose upstream is a second process: the
probe measures whether the proxy stays responsive, and one Python
process writing 200 MiB of responses to slow readers would otherwise
delay the probe's answers itself (a probe sent straight to a shared
upstream saw p99 150 ms there); each phase reports the probe's failures
and p99, whether the admin listener answered, cutover's RSS, and for
the HTTP/2 floods how the connection was cut off and how many requests
of reset streams reached the upstream. Loopback only; every phase and every wait is bounded.
`pip install h2` for the HTTP/2 phases.
"""

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = 1 << 20
BINARY = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """HTTP/1.1 keep-alive: `/big` is 1 MiB, `/__count/PATH` how many
    requests for PATH came, anything else `ok`. Request bodies with a
    length are read and dropped. It runs in a process of its own, so that
    the 1 MiB responses it writes do not slow the probe's event loop."""

    def __init__(self):
        self.paths = {}

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if path.startswith("/__count/"):
                    n = str(self.paths.get(path[len("/__count"):], 0)).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(n), n))
                    await writer.drain()
                    continue
                self.paths[path] = self.paths.get(path, 0) + 1
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.split(b" ", 2)[1].startswith(b"/big"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG)
                    writer.write(b"z" * BIG)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


def rss_mib(pid):
    """`pid`'s RSS, with its children's (nginx's workers)."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    for p in [pid] + kids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            return float("nan")
    return total


async def probe_once(port, latencies, failures):
    started = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        w.write(b"GET /probe HTTP/1.1\r\nHost: probe.test\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 2)
        w.close()
        if data.startswith(b"HTTP/1.1 200"):
            latencies.append(time.monotonic() - started)
        else:
            failures.append(data[:20])
    except (OSError, asyncio.TimeoutError) as e:
        failures.append(repr(e))


async def probe(port, stop, latencies, failures):
    tasks = []
    while not stop.is_set():
        tasks.append(asyncio.ensure_future(probe_once(port, latencies, failures)))
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*tasks)


async def admin_ok(port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 2)
        w.close()
        return data.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        return False


async def hold_open(port, seconds, first, then=None, every=1.0, rcvbuf=None):
    """One connection: send `first`, then `then` a piece per `every` s."""
    w = None
    try:
        if rcvbuf:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
            r, w = await asyncio.open_connection(sock=s, limit=1024)
        else:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        w.write(first)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            await asyncio.sleep(every)
            if then:
                w.write(then[i % len(then):i % len(then) + 1])
                i += 1
                await asyncio.wait_for(w.drain(), 2)
    except (OSError, asyncio.TimeoutError):
        pass  # cut off: what the proxy should do to these
    finally:
        if w:
            w.close()


def probe_process(port, seconds, conn):
    """The probe's own process: it says when it is ready, probes for
    `seconds`, and sends back its latencies and failures. In the attack's
    event loop, a probe's request waited for that loop (2,000 connections
    opening at once delayed a probe's write past its connect, and the
    proxy then rightly closed it as silent), which measured the client."""
    async def run():
        latencies, failures, stop = [], [], asyncio.Event()
        conn.send("ready")
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await probe(port, stop, latencies, failures)
        return latencies, failures
    conn.send(asyncio.run(run()))


async def phase(port, admin, pid, seconds, attack):
    """Run `attack` beside the probe; one table cell: probe failures of
    requests, p99, admin answered, the proxy's RSS before → during (for
    nginx, its master's children summed), and what the attack reports."""
    import multiprocessing
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    prober = spawn.Process(
        target=probe_process, args=(port, seconds, child), daemon=True)
    prober.start()
    if not await loop.run_in_executor(None, lambda: parent.poll(30)):
        sys.exit("the probe process did not start")
    parent.recv()
    started = time.monotonic()
    rss_before = rss_mib(pid)
    attacker = asyncio.ensure_future(attack())
    await asyncio.sleep(seconds / 2)
    admin_up = await admin_ok(admin)
    rss_peak = rss_mib(pid)
    extra = await attacker
    # The probe runs for the whole phase, however soon the attack ended.
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    if not await loop.run_in_executor(None, lambda: parent.poll(10)):
        sys.exit("the probe process did not report")
    latencies, failures = parent.recv()
    prober.join(5)
    for why in failures:
        print(f"probe failure: {why}", file=sys.stderr)
    lat = sorted(latencies)
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
    cell = (f"{len(failures)}/{len(lat) + len(failures)} failed, p99 {p99:.0f} ms, "
            f"admin {'up' if admin_up else 'DOWN'}, {rss_before:.0f}→{rss_peak:.0f} MiB")
    return cell + (f"; {extra}" if extra else "")


def h2_frames():
    from hyperframe.frame import (ContinuationFrame, HeadersFrame, PingFrame,
                                  RstStreamFrame, SettingsFrame)
    import hpack
    return ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame, hpack


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def h2_attack(port, frames_fn, seconds):
    """Send the preface, then the frames `frames_fn` yields, as fast as the
    socket takes them; report how the connection ended."""
    _, _, _, _, SettingsFrame, _ = h2_frames()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(PREFACE + SettingsFrame(0).serialize())
    received = bytearray()
    ended = "still open"
    sent = 0

    async def reader():
        nonlocal ended
        while True:
            data = await r.read(65536)
            if not data:
                return
            received.extend(data)

    rd = asyncio.ensure_future(reader())
    deadline = time.monotonic() + seconds
    try:
        for batch in frames_fn():
            w.write(batch)
            sent += 1
            await asyncio.wait_for(w.drain(), 2)
            if rd.done() or time.monotonic() > deadline:
                break
    except (OSError, asyncio.TimeoutError):
        pass
    try:
        await asyncio.wait_for(rd, 3)
        ended = "closed"
    except asyncio.TimeoutError:
        rd.cancel()
    except OSError:
        ended = "reset"
    goaway = goaway_code(bytes(received))
    if goaway is not None:
        ended = f"GOAWAY ({goaway}), {ended}"
    w.close()
    return ended, sent


def goaway_code(data):
    """The error code of the first GOAWAY frame in `data`, if any."""
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        kind = data[i + 3]
        if kind == 7 and i + 9 + 8 <= len(data):
            code = int.from_bytes(data[i + 13:i + 17], "big")
            return {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 11: "ENHANCE_YOUR_CALM",
                    6: "FRAME_SIZE_ERROR", 9: "COMPRESSION_ERROR"}.get(code, str(code))
        i += 9 + length
    return None


def headers_block(hpack, path="/"):
    return hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                   (":authority", "shop.test"), (":path", path)])


def rapid_reset():
    _, HeadersFrame, _, RstStreamFrame, _, hpack = h2_frames()
    block = headers_block(hpack, "/reset")
    for n in range(5000 // 50):
        out = bytearray()
        for k in range(50):
            sid = 2 * (n * 50 + k) + 1
            out += HeadersFrame(sid, block, flags=["END_STREAM", "END_HEADERS"]).serialize()
            out += RstStreamFrame(sid, error_code=8).serialize()
        yield bytes(out)


def continuation_flood():
    ContinuationFrame, HeadersFrame, _, _, _, hpack = h2_frames()
    yield HeadersFrame(1, headers_block(hpack), flags=["END_STREAM"]).serialize()
    filler = hpack.Encoder().encode([("x-filler", "a" * 1000)])
    for _ in range(10000):
        yield b"".join(ContinuationFrame(1, filler).serialize() for _ in range(10))


def settings_flood():
    _, _, _, _, SettingsFrame, _ = h2_frames()
    one = SettingsFrame(0, settings={4: 65535}).serialize()
    for _ in range(1000):
        yield one * 100


def ping_flood():
    _, _, PingFrame, _, _, _ = h2_frames()
    one = PingFrame(0, b"12345678").serialize()
    for _ in range(1000):
        yield one * 100


def too_many_streams():
    _, HeadersFrame, _, _, _, hpack = h2_frames()
    block = headers_block(hpack, "/big")
    yield b"".join(HeadersFrame(2 * i + 1, block, flags=["END_STREAM", "END_HEADERS"]).serialize()
                   for i in range(1000))


def serve_upstream(port_out):
    """The upstream's process: serve until killed; send its port first."""
    async def run():
        up = Upstream()
        server = await asyncio.start_server(up.handle, "127.0.0.1", 0, backlog=4096)
        port_out.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()
    asyncio.run(run())


async def reached(up_port, path):
    """How many requests for `path` the upstream has had."""
    r, w = await asyncio.open_connection("127.0.0.1", up_port)
    w.write(f"GET /__count{path} HTTP/1.1\r\nHost: up\r\n\r\n".encode())
    head = await r.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    n = int(await r.readexactly(length))
    w.close()
    return n


def cutover_proxy(work, port, admin, up_port, probe_port):
    """cutover, two workers; `port` serves HTTP/1.1 and h2c alike."""
    config = os.path.join(work, "cutover.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = ["127.0.0.1:{port}"]
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
[limits]
max_connections = 1500
client_header_timeout = "5s"
client_body_timeout = "5s"
client_send_timeout = "5s"
[apps.probe]
hosts = ["probe.test"]
[apps.probe.blue]
servers = ["127.0.0.1:{probe_port}"]
[apps.probe.green]
servers = ["127.0.0.1:{probe_port}"]
[apps.shop]
[apps.shop.blue]
servers = ["127.0.0.1:{up_port}"]
[apps.shop.green]
servers = ["127.0.0.1:{up_port}"]
""")
    return subprocess.Popen([BINARY, "run", "-c", config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nginx_proxy(work, port, h2_port, admin, up_port, probe_port):
    """nginx with the same limits where it has them: two workers, 5 s
    header, body and send timeouts, 1,500 connections a worker (nginx
    counts its upstream connections in them too). nginx 1.22 serves h2c
    (prior knowledge) only on a listener of its own, `h2_port`;
    `admin` is a server that answers 200, like cutover's /healthz."""
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
master_process on;
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log crit;
worker_rlimit_nofile 20000;
events {{ worker_connections 1500; }}
http {{
    access_log off;
    client_header_timeout 5s;
    client_body_timeout 5s;
    send_timeout 5s;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    upstream probe {{ server 127.0.0.1:{probe_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        server_name probe.test;
        location / {{
            proxy_pass http://probe;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
        listen 127.0.0.1:{h2_port} http2;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
    server {{ listen 127.0.0.1:{admin}; location / {{ return 200 "ok"; }} }}
}}
""")
    os.chmod(work, 0o777)
    return subprocess.Popen(["nginx", "-c", conf, "-p", work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_against(kind, args, up_port, probe_port):
    port, h2_port, admin = free_port(), free_port(), free_port()
    work = tempfile.mkdtemp(prefix=f"cutover-abuse-{kind}-")
    if kind == "cutover":
        proc, h2_port = cutover_proxy(work, port, admin, up_port, probe_port), port
    else:
        proc = nginx_proxy(work, port, h2_port, admin, up_port, probe_port)
    rows = []
    try:
        for _ in range(200):
            if await admin_ok(admin):
                break
            await asyncio.sleep(0.05)
        secs = args.seconds

        async def nothing():
            await asyncio.sleep(secs)

        async def many(n, **kw):
            await asyncio.gather(*(hold_open(port, secs, **kw) for _ in range(n)))

        def add(name, row):
            rows.append((name, row))
            print(f"| {kind} | {name} | {row} |", flush=True)

        head = b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: " + b"a" * 200
        body_head = b"POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1048576\r\n\r\n"
        big = b"GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        for name, attack in (
                ("baseline", nothing),
                ("slowloris, 1,000 connections", lambda: many(1000, first=b"G", then=head)),
                ("slow body, 200 uploads", lambda: many(200, first=body_head, then=b"x")),
                ("slow readers, 200 of a 1 MiB response", lambda: many(200, first=big, rcvbuf=4096)),
                ("idle flood, 2,000 connections", lambda: many(2000, first=b""))):
            add(name, await phase(port, admin, proc.pid, secs, attack))
        try:
            h2_frames()
        except ImportError:
            print("h2 missing (pip install h2): HTTP/2 phases skipped")
            return rows
        for name, frames, path in (("h2 rapid reset, 5,000 streams", rapid_reset, "/reset"),
                                   ("h2 CONTINUATION flood", continuation_flood, "/"),
                                   ("h2 SETTINGS flood", settings_flood, None),
                                   ("h2 PING flood", ping_flood, None),
                                   ("h2 1,000 streams at once", too_many_streams, "/big")):
            before = await reached(up_port, path) if path else 0

            async def attack(frames=frames, before=before, path=path):
                ended, sent = await h2_attack(h2_port, frames, secs)
                text = f"{ended}; {sent} writes"
                if path:
                    text += f"; {await reached(up_port, path) - before} of its requests reached the upstream"
                return text

            add(name, await phase(port, admin, proc.pid, secs, attack))
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def main_async(args):
    import multiprocessing
    ports, upstreams = [], []
    for _ in range(2):  # the attacks', and the probe's
        parent, child = multiprocessing.Pipe()
        upstreams.append(multiprocessing.Process(target=serve_upstream, args=(child,), daemon=True))
        upstreams[-1].start()
        ports.append(parent.recv())
    up_port, probe_port = ports
    try:
        results = {}
        for kind in args.proxies:
            results[kind] = dict(await run_against(kind, args, up_port, probe_port))
        kinds = list(results)
        names = list(results[kinds[0]])
        print()
        print("| phase | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for name in names:
            print(f"| {name} | " + " | ".join(results[k].get(name, "") for k in kinds) + " |")
    finally:
        for u in upstreams:
            u.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "cutover"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--proxies", default="cutover,nginx",
                    help="which proxies, in turn (cutover, nginx)")
    args = ap.parse_args()
    args.proxies = [p for p in args.proxies.split(",") if p]
    global BINARY
    BINARY = args.binary
    if "cutover" in args.proxies and not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: cargo build --release")
    if "nginx" in args.proxies and not shutil.which("nginx"):
        print("nginx not found (apt-get install nginx): cutover only")
        args.proxies.remove("nginx")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
