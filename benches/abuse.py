#!/usr/bin/env python3
"""Hostile clients against one cutover listener, with a probe beside them.

    python3 benches/abuse.py [--binary target/release/cutover] [--seconds 10]

Starts an upstream (asyncio, in this process; it counts the requests it
gets) and cutover in front of it, then, in turn and each for `--seconds`:

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

A probe sends one GET every 50 ms (20/s) on a new connection throughout;
each phase reports the probe's failures and p99, whether the admin
listener answered, cutover's RSS, and for the HTTP/2 floods how the
connection was cut off and how many requests of reset streams reached
the upstream. Loopback only; every phase and every wait is bounded.
`pip install h2` for the HTTP/2 phases.
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """HTTP/1.1 keep-alive: `/big` is 1 MiB, anything else `ok`. Request
    bodies with a length are read and dropped."""

    def __init__(self):
        self.paths = {}

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
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
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def probe_once(port, latencies, failures):
    started = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        w.write(b"GET /probe HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
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


async def phase(name, port, admin, pid, seconds, attack):
    latencies, failures, stop = [], [], asyncio.Event()
    started = time.monotonic()
    rss_before = rss_mib(pid)
    prober = asyncio.ensure_future(probe(port, stop, latencies, failures))
    attacker = asyncio.ensure_future(attack())
    await asyncio.sleep(seconds / 2)
    admin_up = await admin_ok(admin)
    rss_peak = rss_mib(pid)
    extra = await attacker
    # The probe runs for the whole phase, however soon the attack ended.
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    await prober
    lat = sorted(latencies)
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
    row = (f"| {name} | {len(lat) + len(failures)} | {len(failures)} | {p99:.1f} | "
           f"{'yes' if admin_up else 'NO'} | {rss_before:.1f} → {rss_peak:.1f} | {extra or ''} |")
    print(row, flush=True)
    return row


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


async def main_async(args):
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    port, admin = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="cutover-abuse-")
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
[apps.shop]
[apps.shop.blue]
servers = ["127.0.0.1:{up_port}"]
[apps.shop.green]
servers = ["127.0.0.1:{up_port}"]
""")
    proc = subprocess.Popen([args.binary, "run", "-c", config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if await admin_ok(admin):
                break
            await asyncio.sleep(0.05)
        secs = args.seconds
        rows = ["| phase | probe requests | probe failures | probe p99 ms | admin answered | cutover RSS MiB | the attack |",
                "|---|---|---|---|---|---|---|"]
        print("\n".join(rows), flush=True)

        async def nothing():
            await asyncio.sleep(secs)

        async def many(n, **kw):
            await asyncio.gather(*(hold_open(port, secs, **kw) for _ in range(n)))

        head = b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: " + b"a" * 200
        body_head = b"POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 1048576\r\n\r\n"
        big = b"GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        rows.append(await phase("baseline", port, admin, proc.pid, secs, nothing))
        rows.append(await phase("slowloris, 1,000 connections", port, admin, proc.pid, secs,
                                lambda: many(1000, first=b"G", then=head)))
        rows.append(await phase("slow body, 200 uploads", port, admin, proc.pid, secs,
                                lambda: many(200, first=body_head, then=b"x")))
        rows.append(await phase("slow readers, 200 of a 1 MiB response", port, admin, proc.pid, secs,
                                lambda: many(200, first=big, rcvbuf=4096)))
        rows.append(await phase("idle flood, 2,000 connections (max 1,500)", port, admin, proc.pid, secs,
                                lambda: many(2000, first=b"")))
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
            before = up.paths.get(path, 0)

            async def attack(frames=frames, before=before, path=path):
                ended, sent = await h2_attack(port, frames, secs)
                text = f"{ended}; {sent} writes"
                if path:
                    text += f"; {up.paths.get(path, 0) - before} of its requests reached the upstream"
                return text

            rows.append(await phase(name, port, admin, proc.pid, secs, attack))
        return rows
    finally:
        proc.kill()
        proc.wait()
        server.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "cutover"))
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} is missing: cargo build --release")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
