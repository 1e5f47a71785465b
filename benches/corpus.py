#!/usr/bin/env python3
"""Request-smuggling and request-hygiene corpus: cutover beside nginx 1.22.

    python3 benches/corpus.py [--cutover target/debug/cutover] [--json FILE]
                              [--skip-passive]

Needs Python 3.11 (standard library only), a built cutover (`cargo build
--bin cutover`) and nginx (`apt-get install nginx-light`; done by the
script itself when nginx is missing and it runs as root).

What it does:

- starts a recording upstream per proxy (raw sockets, this file): it reads
  HTTP/1.1 requests, framing bodies as a lenient backend would (chunked
  when any Transfer-Encoding names it, else the first Content-Length),
  records every request head it gets, per connection, and answers each
  with `200 OK` and keep-alive, so that a second request hidden in a body
  shows up as a second request on that upstream connection;
- starts nginx (Debian's 1.22; installed with apt-get when missing and run
  as root) in a temporary prefix, and cutover (`cutover run -c FILE`) with
  a temporary config; both route host `shop.test` paths `/public/...` and
  `/api/...` (nginx: `location /public/`, `location /api/` and the exact
  `/public`, `/api`; cutover: apps with `path_prefix = "/public"` and
  `"/api"`), host `api.test` wholly, and nothing else (404);
- sends each case of the corpus as raw bytes on a fresh connection to each
  proxy, reads the answer (at most ~2 s), and prints one Markdown table:
  the proxy's status (and whether more than one response came back) and
  what its upstream saw (requests, request lines, Host values, framing
  headers).  A case is flagged SMUGGLED when the upstream saw more than the
  one request sent, or a Host or (dot-segments removed) path other than the
  route allows; DESYNC when the upstream could not frame the body it got,
  or bytes were left over on an upstream connection;
- "passive health": 50 malformed chunked requests and 50 uploads aborted
  midway from one client, while a probe client sends a normal GET every
  50 ms (and for 3 s after); each proxy's passive check is easy to trip
  (cutover: `passive = { failures = 5, cooldown = "10s" }`; nginx: two
  upstream servers with `max_fails=5 fail_timeout=10s` and
  `proxy_next_upstream error timeout http_503` -- two, both the recording
  upstream on two ports, as nginx ignores max_fails in a group of one),
  and the probe's failures
  show whether client misbehaviour marked the upstream down.  A control
  follows: twelve requests the upstream answers 503, then one probe, which
  should fail (the check is live).

It exits 0 once the report is printed, whatever the verdicts (it is a
report), and non-zero when it could not run (no nginx, no cutover binary,
a proxy that would not start).  Only 127.0.0.1 is ever contacted; every
wait is bounded and every process it starts is stopped at exit.  It takes
about 40 seconds.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP = "127.0.0.1"
# Reading a proxy's answer: at most this long, and once a complete response
# is in, only this much longer for a second one.
ANSWER_TIMEOUT, ANSWER_QUIET = 2.0, 0.4
UPSTREAM_BODY = b"ok\n"
# The recording upstream answers 503 to a request target containing this
# (the passive section's control: 5xx answers must trip passive health).
FAIL_PATH = b"/fail-503"
CONTROL_503S = 12
# A complete request a smuggling case hides in its body.
SMUGGLED = b"GET /public/smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((LOOP, 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=15.0):
    """Until something accepts on port (bounded); False if proc died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((LOOP, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# ------------------------------------------------------- recording upstream

HEAD_END = re.compile(rb"\r?\n\r?\n")


class Recorder:
    """A loopback HTTP/1.1 upstream that records what it receives.

    Each record: the connection's number, the request's index on that
    connection, the raw head, its request line and (name, value) fields, the
    body length and framing (and the error, when the body could not be
    framed or was cut short). Bytes left on a connection when it closes (a
    partial head) are recorded as a "leftover"."""

    def __init__(self, name, listeners=2):
        self.name = name
        self.lock = threading.Lock()
        self.records = []
        self.conns = {}  # connection number -> socket, while open
        self.next_conn = 0
        self.socks = []
        for _ in range(listeners):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LOOP, 0))
            s.listen(128)
            self.socks.append(s)
            self._spawn(self._accept, s)
        self.ports = [s.getsockname()[1] for s in self.socks]

    @staticmethod
    def _spawn(fn, *args):
        threading.Thread(target=fn, args=args, daemon=True).start()

    def _accept(self, lsock):
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with self.lock:
                n = self.next_conn
                self.next_conn += 1
                self.conns[n] = conn
            self._spawn(self._serve, n, conn)

    def _record(self, **rec):
        rec["time"] = time.monotonic()
        with self.lock:
            self.records.append(rec)

    def _serve(self, n, conn):
        reader = _Reader(conn)
        index, error = 0, None
        try:
            while True:
                head = reader.head()
                if head is None:
                    break
                line, fields = parse_head(head)
                rec = dict(conn=n, index=index, kind="request", head=head,
                           line=line, fields=fields)
                index += 1
                framing, length, error = read_body(reader, fields)
                rec.update(framing=framing, body=length, error=error)
                self._record(**rec)
                if error:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    break
                close = any(k == "connection" and "close" in v.lower() for k, v in fields)
                status = b"503 Service Unavailable" if FAIL_PATH in line else b"200 OK"
                conn.sendall(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n%s\r\n%s" % (
                                 status, len(UPSTREAM_BODY),
                                 b"Connection: close\r\n" if close else b"",
                                 UPSTREAM_BODY))
                if close:
                    break
        except OSError:
            pass
        finally:
            if reader.buf and not error:
                self._record(conn=n, index=index, kind="leftover", head=bytes(reader.buf),
                             line=bytes(reader.buf[:80]), fields=[], framing="", body=0,
                             error="bytes left when the connection closed")
            with self.lock:
                self.conns.pop(n, None)
            conn.close()

    def mark(self):
        with self.lock:
            return len(self.records)

    def since(self, mark):
        with self.lock:
            return self.records[mark:]

    def close_connections(self, wait=1.0):
        """Close every upstream connection (the proxies' pools start afresh
        for the next case) and wait, bounded, for their handlers to finish."""
        with self.lock:
            conns = list(self.conns.values())
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self.lock:
                if not self.conns:
                    return
            time.sleep(0.01)

    def stop(self):
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            s.close()
        self.close_connections(wait=0.5)


class _Reader:
    """Buffered reads off a socket; EOF is None (or a short read)."""

    LIMIT = 1 << 20

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def head(self):
        while True:
            m = HEAD_END.search(self.buf)
            if m:
                head = bytes(self.buf[:m.end()])
                del self.buf[:m.end()]
                return head
            if len(self.buf) > self.LIMIT or not self._fill():
                return None

    def line(self):
        while b"\n" not in self.buf:
            if len(self.buf) > self.LIMIT or not self._fill():
                return None
        i = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:i])
        del self.buf[:i]
        return line

    def take(self, n):
        while len(self.buf) < n:
            if not self._fill():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def parse_head(head):
    """The request line and (lowercased stripped name, value) fields; a
    lenient parse, as many backends do it: bare LF ends a line, a folded
    line continues the field before it, blanks around the name go."""
    lines = re.split(rb"\r?\n", head.rstrip(b"\r\n"))
    fields = []
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t") and fields:
            name, value = fields.pop()
            fields.append((name, (value + " " + raw.strip().decode("latin-1")).strip()))
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            continue
        fields.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return lines[0], fields


def read_body(reader, fields):
    """Read a request body: chunked if any Transfer-Encoding names chunked,
    else the first Content-Length, else none. (framing, length, error)."""
    te = [v.lower() for k, v in fields if k == "transfer-encoding"]
    cl = [v for k, v in fields if k == "content-length"]
    if any("chunked" in v for v in te):
        total = 0
        while True:
            line = reader.line()
            if line is None:
                return "chunked", total, "connection closed in the body"
            size = line.split(b";")[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]+", size):
                return "chunked", total, f"bad chunk size {size[:20]!r}"
            n = int(size, 16)
            if n > 1 << 24:
                return "chunked", total, f"chunk size {size[:20]!r} too large"
            if n == 0:
                while True:  # trailers
                    t = reader.line()
                    if t is None or t.strip() == b"":
                        return "chunked", total, None
            if reader.take(n) is None or reader.line() is None:
                return "chunked", total, "connection closed in the body"
            total += n
    if cl:
        if not re.fullmatch(r"\+?[0-9]+", cl[0]):
            return "content-length", 0, f"bad Content-Length {cl[0]!r}"
        n = int(cl[0])
        got = 0
        while got < n:
            part = reader.take(min(65536, n - got))
            if part is None:
                return "content-length", got, "connection closed in the body"
            got += len(part)
        return "content-length", n, None
    return "none", 0, None


# ------------------------------------------------------------------ proxies

class Proc:
    """A started process, in its own process group; stop() ends that group."""

    def __init__(self, name, argv, port, log_path):
        self.name, self.port, self.log_path = name, port, log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self.log.close()

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""


def ensure_nginx():
    """nginx on PATH, installing Debian's when missing and root."""
    if shutil.which("nginx"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("nginx is missing: install it (apt-get install nginx-light) or run this as root")
        return False
    log("installing nginx-light with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "nginx-light"]):
        try:
            subprocess.run(argv, env=env, check=True, timeout=600,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        except (subprocess.SubprocessError, OSError) as e:
            log(f"{' '.join(argv)} failed: {e}")
            return False
    # The package starts the distribution's own nginx; it is not wanted.
    subprocess.run(["systemctl", "stop", "nginx"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return shutil.which("nginx") is not None


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


def start_nginx(work, upstream):
    port = free_port()
    to_upstream = "proxy_pass http://backend;"
    servers = "\n".join(f"        server {LOOP}:{p} max_fails=5 fail_timeout=10s;"
                        for p in upstream.ports)
    conf = f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {work}/nginx-access.log;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_body_buffer_size 256k;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    # A 503 from the upstream counts against it (and is tried on the next
    # server), as in cutover: the passive section's control trips it so.
    proxy_next_upstream error timeout http_503;
    upstream backend {{
{servers}
        keepalive 16;
    }}
    server {{
        listen {LOOP}:{port} default_server;
        server_name _;
        return 404;
    }}
    server {{
        listen {LOOP}:{port};
        server_name shop.test;
        location /public/ {{ {to_upstream} }}
        location = /public {{ {to_upstream} }}
        location /api/ {{ {to_upstream} }}
        location = /api {{ {to_upstream} }}
        location / {{ return 404; }}
    }}
    server {{
        listen {LOOP}:{port};
        server_name api.test;
        location / {{ {to_upstream} }}
    }}
}}
"""
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = Proc("nginx", ["nginx", "-p", work, "-c", path, "-e", f"{work}/nginx-error.log"],
             port, os.path.join(work, "nginx.out"))
    return p


def start_cutover(work, binary, upstream):
    port, admin = free_port(), free_port()
    blue, green = upstream.ports[0], upstream.ports[-1]
    apps = ""
    for name, hosts, prefix in (("shop_public", '["shop.test"]', "/public"),
                                ("shop_api", '["shop.test"]', "/api"),
                                ("api", '["api.test"]', "/")):
        apps += f"""
[apps.{name}]
hosts = {hosts}
path_prefix = "{prefix}"
sticky = "none"

[apps.{name}.blue]
servers = ["{LOOP}:{blue}"]
passive = {{ failures = 5, cooldown = "10s" }}

[apps.{name}.green]
servers = ["{LOOP}:{green}"]
passive = {{ failures = 5, cooldown = "10s" }}
"""
    conf = f"""# written by benches/corpus.py
[server]
listen = ["{LOOP}:{port}"]
workers = 1
shutdown_timeout = "1s"

[limits]
client_header_timeout = "5s"

[admin]
listen = "{LOOP}:{admin}"

[state]
file = "{work}/cutover.state.json"
{apps}"""
    path = os.path.join(work, "cutover.toml")
    with open(path, "w") as f:
        f.write(conf)
    p = Proc("cutover", [binary, "run", "-c", path, "--reset-state"], port,
             os.path.join(work, "cutover.log"))
    p.admin = admin
    return p


def cutover_unhealthy(proc):
    """The servers cutover's admin API reports unhealthy ("app.colour addr"),
    or None when the API did not answer."""
    try:
        with urllib.request.urlopen(f"http://{LOOP}:{proc.admin}/v1/status", timeout=2) as r:
            status = json.load(r)
    except (OSError, ValueError):
        return None
    down = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("healthy") is False and "addr" in node:
                where = ".".join(p for p in path if p not in ("apps", "servers"))
                down.append(f"{where} {node['addr']}")
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for v in node:
                walk(v, path)
    walk(status, [])
    return down


class Proxies:
    """nginx and cutover, each with its own recording upstream; stopped on
    exit from the with block."""

    def __init__(self, work, binary):
        self.work, self.binary = work, binary
        self.procs = []
        self.upstreams = []

    def __enter__(self):
        try:
            for name, start in (("nginx", start_nginx), ("cutover", start_cutover)):
                up = Recorder(name)
                self.upstreams.append(up)
                d = tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)
                os.chmod(d, 0o755)  # nginx's workers run as another user under root
                p = start(d, up) if name == "nginx" else start(d, self.binary, up)
                p.upstream = up
                self.procs.append(p)
                if not wait_listening(p.port, p.proc):
                    raise RuntimeError(f"{name} did not start listening:\n{p.tail()}")
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        for p in self.procs:
            p.stop()
        for u in self.upstreams:
            u.stop()
        return False

    def __iter__(self):
        return iter(self.procs)


# --------------------------------------------------------------- the client

def exchange(port, payload, timeout=ANSWER_TIMEOUT, quiet=ANSWER_QUIET, pause=None):
    """Send payload on a fresh connection; read until close, the timeout,
    or `quiet` seconds after a complete response. With `pause`, send the
    payload, sleep that long and close without reading (an aborted upload).
    Returns (statuses, how it ended, raw bytes)."""
    try:
        s = socket.create_connection((LOOP, port), timeout=1.0)
    except OSError as e:
        return [], f"connect: {e.strerror or e}", b""
    data, end = b"", "timeout"
    try:
        try:
            s.sendall(payload)
        except OSError:
            pass  # the proxy may answer and close before taking it all
        if pause is not None:
            time.sleep(pause)
            return [], "aborted", b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                end = "reset"
                break
            if not chunk:
                end = "closed"
                break
            data += chunk
            if split_responses(data)[1]:
                deadline = min(deadline, time.monotonic() + quiet)
        if end == "timeout" and split_responses(data)[1]:
            end = "open"
    finally:
        s.close()
    return split_responses(data)[0], end, data


def split_responses(data):
    """([status, ...], whether the last is complete) of the responses in
    data, framed by Content-Length or chunked (or to the end)."""
    statuses, complete = [], False
    while data:
        m = HEAD_END.search(data)
        if not m:
            break
        head = data[:m.end()]
        st = re.match(rb"HTTP/\d\.\d (\d{3})", head)
        if not st:
            break
        code = int(st.group(1))
        statuses.append(code)
        rest = data[m.end():]
        cl = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if code < 200 or code in (204, 304):
            body_len = 0
        elif re.search(rb"(?im)^transfer-encoding:.*chunked", head):
            end = re.search(rb"(?:^|\r\n)0\r\n(?:.*?\r\n)?\r\n", rest, re.S)
            if not end:
                return statuses, False
            body_len = end.end()
        elif cl:
            body_len = int(cl.group(1))
        else:
            return statuses, False  # to the connection's close
        if len(rest) < body_len:
            return statuses, False
        data, complete = rest[body_len:], True
    return statuses, complete


def get(port, path="/public/probe", host="shop.test", timeout=2.0):
    """One plain GET; its status or an error string."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    statuses, end, _ = exchange(port, req, timeout=timeout, quiet=0)
    return statuses[0] if statuses else end


# ----------------------------------------------------------------- the cases

def head(request_line, *fields, body=b""):
    """A request from its line and raw field lines (bytes or str), CRLF."""
    lines = [request_line] + list(fields)
    raw = b"".join((x.encode("latin-1") if isinstance(x, str) else x) + b"\r\n" for x in lines)
    return raw + b"\r\n" + body


def chunked(data):
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


H = "Host: shop.test"
SMUGGLING_BODY = b"0\r\n\r\n" + SMUGGLED


def cases():
    """(name, raw request, expected Host at the upstream)."""
    long_target = "/public/" + "a" * 70_000
    many = [f"X-Field-{i}: v" for i in range(150)]
    hosts = ["[shop.test]/admin#", "shop.test/admin", "shop.test#x", "user@shop.test",
             "shop.test?x", "shop .test"]
    out = [
        ("baseline: GET /public/ok", head("GET /public/ok HTTP/1.1", H)),
        ("baseline: POST /api/echo, Content-Length",
         head("POST /api/echo HTTP/1.1", H, "Content-Length: 5", body=b"hello")),
        ("baseline: POST /api/echo, chunked",
         head("POST /api/echo HTTP/1.1", H, "Transfer-Encoding: chunked", body=chunked(b"hello"))),
        ("baseline: GET http://api.test/x, Host api.test",
         head("GET http://api.test/x HTTP/1.1", "Host: api.test"), "api.test"),
        ("CL + TE: chunked, request hidden in the body",
         head("POST /api/x HTTP/1.1", H, f"Content-Length: {len(SMUGGLING_BODY)}",
              "Transfer-Encoding: chunked", body=SMUGGLING_BODY)),
        ("two different Content-Lengths (5, then the whole)",
         head("POST /api/x HTTP/1.1", H, "Content-Length: 5",
              f"Content-Length: {5 + len(SMUGGLED)}", body=b"hello" + SMUGGLED)),
        ("Content-Length: +5", head("POST /api/x HTTP/1.1", H, "Content-Length: +5", body=b"hello")),
        ("Transfer-Encoding: chunked, identity",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: chunked, identity",
              body=chunked(b"hello"))),
        ("Transfer-Encoding: foo",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: foo", body=chunked(b"hello"))),
        ("TE obs-folded (`Transfer-Encoding:\\r\\n chunked`) + CL, request hidden",
         head("POST /api/x HTTP/1.1", H, f"Content-Length: {len(SMUGGLING_BODY)}",
              "Transfer-Encoding:", " chunked", body=SMUGGLING_BODY)),
        ("HTTP/1.0 with Transfer-Encoding: chunked",
         head("POST /api/x HTTP/1.0", H, "Transfer-Encoding: chunked", body=chunked(b"hello"))),
        ("obs-fold in a field (`X-A: 1\\r\\n 2`)", head("GET /public/x HTTP/1.1", H, "X-A: 1", " 2")),
        ("NUL in a field value", head("GET /public/x HTTP/1.1", H, b"X-A: a\x00b")),
        ("bare CR in a field value", head("GET /public/x HTTP/1.1", H, b"X-A: a\rb")),
        ("bare LF ending a field line", head("GET /public/x HTTP/1.1", b"Host: shop.test\nX-A: 1")),
        ("`Transfer-Encoding : chunked` (space before colon) + CL, request hidden",
         head("POST /api/x HTTP/1.1", H, f"Content-Length: {len(SMUGGLING_BODY)}",
              "Transfer-Encoding : chunked", body=SMUGGLING_BODY)),
        ("`Host : shop.test` (space before colon)", head("GET /public/x HTTP/1.1", "Host : shop.test")),
        ("space in a field name (`X A: 1`)", head("GET /public/x HTTP/1.1", H, "X A: 1")),
        ("chunk size `zz`",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n")),
        ("bare LF after a chunk size (`5\\n`)",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: chunked", body=b"5\nhello\r\n0\r\n\r\n")),
        ("bare LF in a chunk extension (`5;a\\nb\\r\\n`)",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: chunked",
              body=b"5;a\nb\r\nhello\r\n0\r\n\r\n")),
        ("chunk size overflow (`ffffffffffffffffff`)",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: chunked",
              body=b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n")),
        ("Transfer-Encoding: identity, chunked",
         head("POST /api/x HTTP/1.1", H, "Transfer-Encoding: identity, chunked",
              body=chunked(b"hello"))),
        ("two equal Content-Lengths (5, 5)",
         head("POST /api/x HTTP/1.1", H, "Content-Length: 5", "Content-Length: 5", body=b"hello")),
        ("no Host (HTTP/1.1)", head("GET /public/x HTTP/1.1")),
        ("two Host lines (shop.test, api.test)", head("GET /public/x HTTP/1.1", H, "Host: api.test")),
    ]
    out += [(f"Host: `{h}`", head("GET /public/x HTTP/1.1", f"Host: {h}")) for h in hosts]
    out += [
        ("absolute-form `GET http://api.test/x` with Host: shop.test",
         head("GET http://api.test/x HTTP/1.1", H), "api.test"),
        ("`/public/../admin`", head("GET /public/../admin HTTP/1.1", H)),
        ("`/public/%2e%2e/admin`", head("GET /public/%2e%2e/admin HTTP/1.1", H)),
        ("`/public/..;/admin` (Tomcat reads `..;` as `..`)", head("GET /public/..;/admin HTTP/1.1", H)),
        ("`/public\\..\\admin` (backslashes)", head("GET /public\\..\\admin HTTP/1.1", H)),
        ("`/public/%5c../admin` (an encoded backslash)", head("GET /public/%5c../admin HTTP/1.1", H)),
        ("`CONNECT api.test:443`", head("CONNECT api.test:443 HTTP/1.1", "Host: api.test:443"), "api.test"),
        ("`Upgrade: h2c` with HTTP2-Settings",
         head("GET /public/x HTTP/1.1", H, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
              "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA")),
        ("`/apiary` (not under /api/)", head("GET /apiary HTTP/1.1", H)),
        ("150 header fields", head("GET /public/x HTTP/1.1", H, *many)),
        ("70 kB request target", head(f"GET {long_target} HTTP/1.1", H)),
    ]
    return [(c[0], c[1], c[2] if len(c) > 2 else "shop.test") for c in out]


# ---------------------------------------------------------------- verdicts

# What the proxies route, per host: an entry ending in "/" covers the paths
# under it, any other only itself (nginx's `location /api/`, `location = /api`).
ROUTES = {"shop.test": ("/public/", "/public", "/api/", "/api"), "api.test": ("/",)}


def normalize(path):
    """The path without query or fragment, %2e decoded, dot-segments
    removed (RFC 3986 §5.2.4): what a backend may take it for."""
    segments = re.sub(r"%2[eE]", ".", re.split(r"[?#]", path, 1)[0]).split("/")[1:]
    out = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def routed(host, path):
    return any(path.startswith(p) if p.endswith("/") else path == p for p in ROUTES.get(host, ()))


def judge(records, expect_host):
    """Flags (reasons the case counts as SMUGGLED) from what the upstream saw."""
    flags = []
    reqs = [r for r in records if r["kind"] == "request"]
    if len(reqs) > 1:
        same = len({r["conn"] for r in reqs}) < len(reqs)
        flags.append(f"{len(reqs)} requests" + (" on one connection" if same else ""))
    for r in reqs:
        parts = r["line"].decode("latin-1").split(" ")
        target = parts[1] if len(parts) > 1 else ""
        hosts = [v for k, v in r["fields"] if k == "host"]
        authority = None
        m = re.match(r"(?i)https?://([^/?#]*)(.*)", target)
        if m:
            authority, target = m.group(1).lower(), m.group(2) or "/"
        if len(hosts) != 1 or hosts[0].lower() != expect_host:
            flags.append(f"Host {', '.join(map(repr, hosts)) or 'none'}")
        elif authority is not None and authority != expect_host:
            flags.append(f"authority {authority!r}")
        path = normalize(target)
        if not routed(expect_host, path):
            flags.append(f"path {path}")
    return flags


def desync(records):
    """Signs that the proxy and the upstream framed a request differently."""
    out = [f"upstream: {r['error']}" for r in records if r["kind"] == "request" and r.get("error")]
    if any(r["kind"] == "leftover" for r in records):
        out.append("bytes left over on an upstream connection")
    return out


def verdict(result):
    if result["flags"]:
        return "SMUGGLED"
    if result["desync"]:
        return "DESYNC"
    if any(r["kind"] == "request" for r in result["upstream"]):
        return "forwarded"
    return "refused"


def run_case(proc, raw, expect_host):
    up = proc.upstream
    mark = up.mark()
    statuses, end, _ = exchange(proc.port, raw)
    time.sleep(0.15)  # whatever the upstream still has in flight
    up.close_connections()
    records = up.since(mark)
    time.sleep(0.05)  # the proxy sees its pooled connections closed
    result = dict(statuses=statuses, end=end, upstream=records,
                  flags=judge(records, expect_host), desync=desync(records))
    result["verdict"] = verdict(result)
    return result


# ----------------------------------------------------------- passive health

def passive_health(proc, rounds=50, after=3.0, every=0.05):
    """Bad chunked requests and aborted uploads from one client while a
    probe GETs every `every` s (during that and `after` s more); then the
    control: upstream 503s, which must trip passive health."""
    probes, stop = [], threading.Event()
    up = proc.upstream
    mark = up.mark()
    t0 = time.monotonic()

    def probe():
        while not stop.is_set():
            start = time.monotonic()
            probes.append((start - t0, get(proc.port, "/api/probe", timeout=1.5)))
            stop.wait(max(0.0, every - (time.monotonic() - start)))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    bad = head("POST /api/upload HTTP/1.1", H, "Transfer-Encoding: chunked",
               body=b"zz\r\nhello\r\n0\r\n\r\n")
    abort = head("POST /api/upload HTTP/1.1", H, "Content-Length: 100000", body=b"a" * 1000)
    answers = {}
    try:
        for _ in range(rounds):
            statuses, end, _ = exchange(proc.port, bad, timeout=1.0, quiet=0)
            key = str(statuses[0] if statuses else end)
            answers[key] = answers.get(key, 0) + 1
            exchange(proc.port, abort, pause=0.05)
        abuse_end = time.monotonic() - t0
        time.sleep(after)
    finally:
        stop.set()
        thread.join(timeout=5)
    seen = [r for r in up.since(mark) if "/upload" in r["line"].decode("latin-1")]
    failures = [(t, s) for t, s in probes if not (isinstance(s, int) and 200 <= s < 300)]
    out = dict(probes=len(probes), failures=len(failures), abuse_seconds=round(abuse_end, 2),
               failure_kinds={}, first_failure=None, last_failure=None, bad_chunk_answers=answers,
               upstream_bad_chunk=sum(r["framing"] == "chunked" for r in seen),
               upstream_aborted=sum(r["framing"] == "content-length" for r in seen),
               upstream_cut_short=sum(bool(r.get("error")) for r in seen))
    for t, s in failures:
        out["failure_kinds"][str(s)] = out["failure_kinds"].get(str(s), 0) + 1
    if failures:
        out["first_failure"], out["last_failure"] = round(failures[0][0], 2), round(failures[-1][0], 2)
    if proc.name == "cutover":
        out["unhealthy_after"] = cutover_unhealthy(proc)
    # The control: 503s from the upstream, then one probe.
    control = [get(proc.port, f"/api{FAIL_PATH.decode()}/{i}") for i in range(CONTROL_503S)]
    out["control"] = dict(answers=control, probe_after=get(proc.port, "/api/probe"))
    return out


# ------------------------------------------------------------------- report

def show(b, limit=70):
    """bytes/str for a table cell: escapes visible, pipes escaped, cut."""
    s = b.decode("latin-1") if isinstance(b, bytes) else b
    s = s.encode("unicode_escape").decode("ascii")
    if len(s) > limit:
        s = s[:limit - 20] + f"…({len(s)} chars)"
    return s.replace("|", "\\|").replace("`", "'")


def status_cell(res):
    if not res["statuses"]:
        return f"— ({res['end']})"
    cell = str(res["statuses"][0])
    if len(res["statuses"]) > 1:
        cell += f" **+{len(res['statuses']) - 1} more: {', '.join(map(str, res['statuses'][1:]))}**"
    if res["end"] in ("reset",):
        cell += " (reset)"
    return cell


def upstream_cell(res):
    parts = []
    for r in res["upstream"]:
        if r["kind"] == "leftover":
            parts.append(f"leftover `{show(r['head'], 50)}`")
            continue
        hosts = [v for k, v in r["fields"] if k == "host"]
        framing = [f"{k}: {v}" for k, v in r["fields"] if k in ("content-length", "transfer-encoding")]
        text = f"`{show(r['line'])}` Host {', '.join(show(h, 30) for h in hosts) or '(none)'}"
        if framing:
            text += " · " + ", ".join(show(f, 40) for f in framing)
        if r.get("error"):
            text += f" · {show(r['error'], 40)}"
        parts.append(text)
    cell = "<br>".join(parts) or "—"
    for label, flags in (("DESYNC", res["desync"]), ("SMUGGLED", res["flags"])):
        if flags:
            cell = f"**{label}** ({'; '.join(show(f, 50) for f in flags)})<br>" + cell
    return cell


def table(rows, versions):
    out = [f"## Request hygiene: {versions['nginx']} and cutover ({versions['cutover']}), "
           "side by side", "",
           "| case | nginx status | nginx upstream saw | cutover status | cutover upstream saw "
           "| same verdict? |", "|---|---|---|---|---|---|"]
    for row in rows:
        n, c = row["nginx"], row["cutover"]
        same = "yes" if n["verdict"] == c["verdict"] else f"**no** ({n['verdict']} / {c['verdict']})"
        out.append(f"| {show(row['case'], 90)} | {status_cell(n)} | {upstream_cell(n)} | "
                   f"{status_cell(c)} | {upstream_cell(c)} | {same} |")
    total = len(rows)
    same = sum(r["nginx"]["verdict"] == r["cutover"]["verdict"] for r in rows)
    more = sum(r["cutover"]["verdict"] != "refused" and r["nginx"]["verdict"] == "refused"
               for r in rows)
    fewer = sum(r["nginx"]["verdict"] != "refused" and r["cutover"]["verdict"] == "refused"
                for r in rows)
    bad = {p: {v: sum(r[p]["verdict"] == v for r in rows) for v in ("SMUGGLED", "DESYNC")}
           for p in ("nginx", "cutover")}
    out += ["", f"**Summary:** {total} cases, same verdict in {same}; cutover forwarded {more} "
            f"that nginx refused, nginx forwarded {fewer} that cutover refused; SMUGGLED: nginx {bad['nginx']['SMUGGLED']}, cutover "
            f"{bad['cutover']['SMUGGLED']}; DESYNC: nginx {bad['nginx']['DESYNC']}, cutover "
            f"{bad['cutover']['DESYNC']}.",
            "", "Verdicts: refused (the upstream saw nothing), forwarded, DESYNC (the upstream "
            "could not frame what it got, or bytes were left on its connection), SMUGGLED (the "
            "upstream saw more than the one request, or a Host or path the route does not allow)."]
    return "\n".join(out)


def passive_table(results):
    out = ["## Passive health: client misbehaviour must not mark the upstream down", "",
           "From one client, interleaved: 50 requests with a bad chunk size and 50 uploads "
           "aborted after 1000 of 100000 bytes, all to /api/upload; a probe GET /api/probe every "
           f"50 ms during that and 3 s after. Then the control: {CONTROL_503S} requests the upstream "
           "answers 503, and one probe (it should fail: the check is live; nginx tries each on "
           "both servers and counts the 503 against the first only, so it trips after about "
           "nine).", "",
           "| proxy | abuse took | probes | probe failures (kind: count) | first – last failure (s) "
           "| bad-chunk answers | the upstream saw (bad chunk, aborted, cut short) | unhealthy after | control: "
           f"probe after {CONTROL_503S} 503s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        kinds = ", ".join(f"{k}: {v}" for k, v in r["failure_kinds"].items())
        fails = f"{r['failures']}" + (f" ({kinds})" if kinds else "")
        span = f"{r['first_failure']} – {r['last_failure']}" if r["failures"] else "—"
        answers = ", ".join(f"{k}: {v}" for k, v in r["bad_chunk_answers"].items())
        down = r.get("unhealthy_after")
        down = "n/a" if name == "nginx" else ("?" if down is None else (", ".join(down) or "none"))
        out.append(f"| {name} | {r['abuse_seconds']} s | {r['probes']} | {fails} | {span} | {answers} "
                   f"| {r['upstream_bad_chunk']}, {r['upstream_aborted']}, {r['upstream_cut_short']} | {down} "
                   f"| {r['control']['probe_after']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cutover", default=os.path.join(ROOT, "target", "debug", "cutover"),
                    help="the cutover binary (default target/debug/cutover)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--skip-passive", action="store_true", help="only the request corpus")
    args = ap.parse_args()
    binary = os.path.abspath(args.cutover)
    if not os.access(binary, os.X_OK):
        log(f"no cutover binary at {binary}: build it (cargo build --bin cutover) or pass --cutover")
        return 2
    if not ensure_nginx():
        return 2
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(binary)))
    cutover = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    versions = {"nginx": nginx_version(),
                "cutover": f"{cutover.stdout.strip() or '?'}, {os.path.relpath(binary, ROOT)} "
                           f"built {built}"}
    # SIGTERM too ends in the finally below, which stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = tempfile.mkdtemp(prefix="cutover-corpus-")
    os.chmod(work, 0o755)
    rows, passive = [], {}
    try:
        with Proxies(work, binary) as proxies:
            for p in proxies:
                s = get(p.port, "/public/sanity")
                if s != 200 or not p.upstream.since(0):
                    raise RuntimeError(f"{p.name}: a plain GET through it got {s}, upstream saw "
                                       f"{len(p.upstream.since(0))} requests\n{p.tail()}")
                p.upstream.close_connections()
            for name, raw, host in cases():
                log(f"case: {name}")
                rows.append(dict(case=name, request=raw.decode("latin-1"),
                                 **{p.name: run_case(p, raw, host) for p in proxies}))
            down = cutover_unhealthy(next(p for p in proxies if p.name == "cutover"))
            if down:
                log(f"note: after the corpus, cutover reports unhealthy: {down}")
        if not args.skip_passive:
            with Proxies(work, binary) as proxies:
                for p in proxies:
                    log(f"passive health: {p.name}")
                    passive[p.name] = passive_health(p)
    except (RuntimeError, OSError) as e:
        log(f"could not run: {e}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, versions))
    if passive:
        print()
        print(passive_table(passive))
    if args.json:
        def plain(o):
            return o.decode("latin-1") if isinstance(o, bytes) else str(o)
        with open(args.json, "w") as f:
            json.dump(dict(versions=versions, cases=rows, passive=passive), f, indent=1,
                      default=plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
