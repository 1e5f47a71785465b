#!/usr/bin/env python3
"""Memory of a rate limit that has seen a million distinct keys, cutover
beside nginx. Run by hand (not by CI); the figures are in docs/access.md.

    python3 benches/rate_limit.py [--proxy cutover|nginx|both] [--keys N]
                                  [--max-keys M] [--binary PATH]

Each proxy in turn (one worker; nginx as one process, `master_process
off`, so that its zone is counted once) runs in front of the nginx
upstream with the same limit, keyed by the `x-key` field at 1 request a
minute per key (compare.RateLimit: for cutover `rate_limit = { key =
"header:x-key", rate = "1/m", burst = 1, max_keys = M }`, for nginx
`limit_req_zone $http_x_key` sized for M keys). wrk (one thread, 32
keep-alive connections, a Lua script that pipelines eight requests at a
time) sends 32 requests with keys of their own as a warm-up, then N
requests each with a key not seen before.
The report gives the proxy's RSS (VmRSS) before and after the N keys and
its peak (VmHWM); cutover's `rate_limit.keys` from GET /v1/status; and,
for both, how many of 1,000 keys spread over the N are still remembered:
each is asked for once more, and a key remembered is refused (429), a
key forgotten is let through. The N requests must take less than a
minute, the keys' lifetime, for that to count forgetting by the table
alone: the report gives the time they took.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind  # noqa: E402
import compare  # noqa: E402

# Each request a key of its own (`PREFIX..i`), eight pipelined at a time
# (to send a million keys well within their minute on a busy machine).
# Once COUNT answers came back, the script reports them and ends wrk
# (whose own stop would wait out the duration).
SCRIPT = """
local count, prefix, sent, answered, refused = 0, "", 0, 0, 0
function init(args) count = tonumber(args[1]); prefix = args[2] end
function request()
  local batch = {}
  for j = 1, 8 do
    sent = sent + 1
    batch[j] = wrk.format("GET", "/", {["x-key"] = prefix .. sent})
  end
  return table.concat(batch)
end
function response(status)
  answered = answered + 1
  if status ~= 200 then refused = refused + 1 end
  if answered >= count then
    io.write(string.format("answered %d, not 200 %d\\n", answered, refused))
    io.flush()
    os.exit(0)
  end
end
"""


def distinct_keys(work, n, prefix):
    """Send `n` requests, each with an `x-key` of its own; the script's report."""
    script = os.path.join(work, "keys.lua")
    with open(script, "w") as f:
        f.write(SCRIPT)
    argv = ["wrk", "-t1", "-c32", "-d600s", "--timeout", "10s", "-s", script,
            f"http://127.0.0.1:{compare.PROXY}/", "--", str(n), prefix]
    return subprocess.run(argv, capture_output=True, text=True, timeout=700, check=True).stdout


def remembered(n, probes=1000):
    """Of `probes` keys spread over the `n` sent, how many the limit
    still holds (a second request within the minute is refused)."""
    conn = http.client.HTTPConnection("127.0.0.1", compare.PROXY, timeout=10)
    refused = 0
    # Keys from the middle of each stretch of n / probes: not the first
    # eight (wrk calls `request` once before it starts, to look at it),
    # nor the last few hundred (in flight when wrk stopped).
    step = max(1, n // probes)
    for i in range(step // 2, n, step):
        conn.request("GET", "/", headers={"x-key": f"k{i}"})
        r = conn.getresponse()
        r.read()
        refused += r.status == 429
    conn.close()
    return refused


def cutover_keys():
    conn = http.client.HTTPConnection("127.0.0.1", compare.ADMIN, timeout=10)
    conn.request("GET", "/v1/status")
    status = json.loads(conn.getresponse().read())
    return status["apps"]["bench"]["rate_limit"]["keys"]


def measure(kind, work, n, max_keys):
    limit = compare.RateLimit("header:x-key", "1/m", 1, max_keys)
    argv = callgrind.proxy_argv(kind, "minimal", work, rate_limit=limit)
    proxy = compare.Server(kind, argv, compare.PROXY)
    try:
        pid = proxy.pids()
        distinct_keys(work, 32, "warm")  # a few keys: the tables stay as they are
        before = compare.rss_kib(pid)
        started = time.monotonic()
        out = distinct_keys(work, n, "k")
        took = time.monotonic() - started
        after, peak = compare.rss_kib(pid), compare.rss_kib(pid, "VmHWM:")
        keys = cutover_keys() if kind == "cutover" else None
        held = remembered(n)
    finally:
        proxy.stop()
    answers = re.search(r"answered (\d+), not 200 (\d+)", out)
    size = (f"max_keys = {max_keys}" if kind == "cutover"
            else f"zone {limit.nginx_zone_mib()} MiB")
    print(f"{kind} ({size}): {answers[1]} requests with distinct keys "
          f"in {took:.0f} s, {answers[2]} not 200; "
          f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB (+{(after - before) / 1024:.1f}), "
          f"peak {peak / 1024:.1f} MiB"
          + (f"; status keys {keys}" if keys is not None else "")
          + f"; remembered {held} of 1000 sampled keys", flush=True)
    if took > 60:
        print("  (longer than a minute: the first keys expired before the end, as they should; "
              "run it on a quieter machine to count what the table forgets)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", choices=["cutover", "nginx", "both"], default="both")
    ap.add_argument("--keys", type=int, default=1_000_000, help="distinct keys to send")
    ap.add_argument("--max-keys", type=int, default=1_000_000,
                    help="cutover's max_keys; nginx's zone is sized for as many")
    ap.add_argument("--binary", metavar="PATH", help="cutover: the binary (default target/release/cutover)")
    args = ap.parse_args()
    if args.binary:
        compare.CUTOVER = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="cutover-ratelimit-")
    upstream = compare.start_upstream(work)
    try:
        for kind in (["cutover", "nginx"] if args.proxy == "both" else [args.proxy]):
            measure(kind, work, args.keys, args.max_keys)
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
