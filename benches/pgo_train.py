#!/usr/bin/env python3
"""The training run of the profile-guided build (benches/pgo.sh).

Runs an instrumented cutover binary (built with `-Cprofile-generate`)
through a mix of the traffic a front door sees, so that the optimized
build lays out and inlines for all of it, not for the benchmark alone:

- the benchmark's minimal config: HTTP/1.1 keep-alive GETs at 64 and 256
  connections, and new connections (`Connection: close`);
- the realistic config (two apps, ten rules with a user-agent regex, a
  sticky split, the colour header): browser requests with cookies, a
  mobile user agent, the testers' header, another host;
- request bodies (POST, 4 KiB) through the same config;
- flips through the admin API every 100 ms under load, status and
  metrics reads;
- HTTP/2 by prior knowledge (h2c) and, over TLS, HTTP/1.1 and h2 (ALPN),
  with `h2load` (Debian's nghttp2-client) where it is installed;
- pools with `protocol = "h2"` (an nginx speaking h2c upstream).

Everything goes to 127.0.0.1. Usage: pgo_train.py INSTRUMENTED_BINARY;
PGO_SKIP=minimal,... leaves phases out (to see how much of the gain
carries over to traffic the training did not see).
Each phase runs a fresh daemon process and stops it with SIGTERM, which
writes its profile (LLVM_PROFILE_FILE, set by pgo.sh)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

TLS_PORT = 18443
H2_UPSTREAM = 18084
MOBILE = "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148"


def admin_get(path):
    c.call(c.ADMIN, "GET", path)


def post_script(work):
    path = os.path.join(work, "post.lua")
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n'
                'wrk.body = string.rep("x", 4096)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    return path


def run(argv, secs):
    """Run a load generator; log what it got, so that a phase that did not
    reach the proxy (or got errors) shows."""
    if not shutil.which(argv[0]):
        c.log(f"  {argv[0]} is missing (benches/pgo.sh installs it): not trained")
        return
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60).stdout
    if argv[0] == "wrk":
        got = re.search(r"(\d+) requests in", out)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        what = f"{got.group(1) if got else 0} requests, {bad.group(1) if bad else 0} not 2xx/3xx"
    else:
        got = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
        ok = re.search(r"status codes: (\d+) 2xx", out)
        what = f"{got.group(1) if got else 0} requests, {ok.group(1) if ok else 0} of them 2xx"
    c.log(f"  {argv[0]} {argv[-1]}: {what}")


def wrk(url, conns, secs, *extra):
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", *extra, url]
    run(argv, secs)


def h2load(url, n):
    run(["h2load", "-c", "16", "-m", "8", "-n", str(n), url], 60)


def certificate(work):
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def with_tls(path, work):
    """The config at `path` with a TLS listener too."""
    cert, key = certificate(work)
    with open(path) as f:
        text = f.read()
    text = text.replace("[server]\n", f'[server]\nlisten_tls = ["127.0.0.1:{TLS_PORT}"]\n', 1)
    text += f'\n[[tls.certs]]\ncert = "{cert}"\nkey = "{key}"\n'
    out = path.replace(".toml", "-tls.toml")
    with open(out, "w") as f:
        f.write(text)
    return out


def h2_upstream(work):
    """An nginx speaking h2c (prior knowledge), for pools with protocol = "h2"."""
    conf = c.nginx_head(work, "upstream-h2") + f"""
    server {{ listen 127.0.0.1:{H2_UPSTREAM} http2; location / {{ return 200 "hello"; }} }}
}}
"""
    path = os.path.join(work, "upstream-h2.conf")
    with open(path, "w") as f:
        f.write(conf)
    return c.Server("upstream-h2", ["nginx", "-c", path, "-p", work, "-g", "daemon off;"],
                    H2_UPSTREAM)


def h2_pools(work):
    """The minimal config with both pools on the h2c upstream."""
    with open(c.cutover_minimal_conf(work)) as f:
        text = f.read()
    for port in (c.UP_BLUE, c.UP_GREEN):
        text = text.replace(f'servers = ["127.0.0.1:{port}"]',
                            f'servers = ["127.0.0.1:{H2_UPSTREAM}"]\nprotocol = "h2"')
    path = os.path.join(work, "cutover-h2.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def phase(binary, conf, name, body):
    if name in os.environ.get("PGO_SKIP", "").split(","):
        c.log(f"training: {name} skipped (PGO_SKIP)")
        return
    c.log(f"training: {name}")
    server = c.Server(name, [binary, "run", "-c", conf], c.PROXY)
    try:
        body()
    finally:
        server.stop()
        c.wait_port_free(c.PROXY)


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="cutover-pgo-")
    upstream = c.start_upstream(work)
    plain = f"http://127.0.0.1:{c.PROXY}/"
    try:
        def minimal():
            wrk(plain, 64, 6)
            wrk(plain, 256, 2)
            wrk(plain, 16, 1, "-H", "Connection: close")

        phase(binary, c.cutover_minimal_conf(work), "minimal", minimal)

        def realistic():
            browser = [a for h in c.BROWSER for a in ("-H", h)]
            wrk(plain, 64, 3, *browser)
            wrk(plain, 64, 1, "-H", MOBILE)
            wrk(plain, 32, 1, "-H", "x-preview: letmein")
            wrk(plain, 32, 1, "-H", "Host: api.example.com")
            wrk(plain, 32, 2, "-s", post_script(work))
            stop = threading.Event()
            flipper = threading.Thread(target=c.storm, args=(stop, lambda: c.post_flip(c.ADMIN)))
            flipper.start()
            wrk(plain, 64, 3, *browser)
            stop.set()
            flipper.join()
            for _ in range(20):
                admin_get("/v1/status")
                admin_get("/metrics")
            h2load(plain, 40000)
            h2load(f"https://127.0.0.1:{TLS_PORT}/", 20000)
            wrk(f"https://127.0.0.1:{TLS_PORT}/", 32, 2)

        phase(binary, with_tls(c.cutover_realistic_conf(work), work), "realistic", realistic)

        def h2():
            # Short, and bodies few: nginx answers with `return` before
            # reading a body and skips the rest of it, and its HTTP/2 flood
            # guard closes a connection once ~8 MiB that were not request
            # bodies it read (heads included) arrived on it.
            wrk(plain, 64, 1)
            body = os.path.join(work, "body-1k")
            with open(body, "wb") as f:
                f.write(b"x" * 1024)
            run(["h2load", "--h1", "-c", "16", "-n", "4000", "-d", body, plain], 60)

        up2 = h2_upstream(work)
        try:
            phase(binary, h2_pools(work), "h2-upstream", h2)
        finally:
            up2.stop()
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
