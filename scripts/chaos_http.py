#!/usr/bin/env python3
"""Hostile-HTTP and load tester for `sleuth serve` and `sleuth retrieval-server`.

Standard library only. Two modes:

Hostile mode (default)
    python3 scripts/chaos_http.py --url http://127.0.0.1:PORT --kind serve|retrieval \
        --requests N [--concurrency C] [--pid SERVER_PID] [--seconds MAX] [--seed S]

    C worker threads each draw a random case family (seeded: thread i uses seed*1000+i) and
    send it, until N requests were sent or MAX seconds passed. Families, one function each
    (`case_<family>` below; a case is counted as "family/variant"):

    - valid:            control requests that must succeed (tiny max_tokens 1-4 on serve;
                        streamed and plain; GET /health, GET /v1/models).
    - malformed_json:   truncated, trailing garbage, empty body, `null`, an array, a number,
                        BOM prefix, single quotes, trailing comma, comments, NUL bytes, NaN.
    - wrong_types:      every field of the request with a value of the wrong type or out of
                        range (messages as a string, content as a number, max_tokens -1 /
                        10^30 / 1.5 / "4", temperature "hot" / NaN / 1e999, stream "yes";
                        retrieval: queries as a string, k/topk -1 / 10^12 / "3", [], 10k
                        queries, 1025 queries, a 100 KB query ...).
    - missing_fields:   required fields left out, `{}`, messages without role / content.
    - unknown_fields:   extra fields (must be ignored), duplicate keys.
    - huge_body:        2-6 MB bodies above the body limit with Content-Length, chunked, a lying
                        Content-Length; and a body just under the limit.
    - huge_headers:     a 64 KB header value, 200 headers, a 1 MB header, bad header names,
                        conflicting Content-Length / Transfer-Encoding (raw sockets).
    - deep_nesting:     100k `[`, 100k `{"a":`, deep nesting inside a known and an unknown
                        field.
    - invalid_utf8:     invalid UTF-8 bytes in JSON strings (raw, overlong, surrogates), a lone
                        `\\ud800` escape, raw bytes >0x7f in the request path, %FF in the path.
    - content_type:     text/plain, form-encoded, multipart, none, UTF-16 body.
    - wrong_method:     GET/PUT/DELETE/PATCH/OPTIONS/HEAD on POST routes, POST on GET routes,
                        an unknown method token.
    - unknown_paths:    unknown routes, path traversal, trailing slashes, an 8 KB URL (reaches
                        the router) and a 100 KB URL (refused by the HTTP parser).
    - http10_pipeline:  HTTP/1.0 requests (no Host, keep-alive), and 3-6 requests pipelined
                        on one connection (valid and invalid mixed); every answer is read.
    - slowloris:        several sockets trickle a request a byte at a time for a few seconds
                        (some finish, some never do); meanwhile a normal request is timed and
                        must still be answered quickly ("stalls" counts those that were not).
                        Budgeted: it runs a handful of times, not thousands.
    - slow_hold:        one request stopped mid-headers and one mid-body, kept open up to
                        --hold-seconds (default 65 when N >= 2000, otherwise --header-timeout
                        + 5): the server must close the mid-headers one within its header-read
                        deadline (--header-timeout; counted as "held_open_headers", a failure);
                        retrieval answers the mid-body one with a JSON 408 after its 60 s
                        request_timeout_s; a mid-body request the server neither answers nor
                        closes counts as "held_open" (informational). Runs once.
    - large_concurrent (retrieval): eight of the largest requests at once (1,024 queries,
                        k = 100): all must be answered 200 with 1,024 lists, and the server's
                        RSS may grow by at most 1 GiB while they run (its in-flight passage
                        budget holds two at a time). Runs once.
    - disconnect:       clients hanging up mid-headers, mid-body, after sending a full request
                        but before the answer, and (serve) mid-stream after the first SSE chunk.
    - burst (serve):    150 concurrent requests at once, more than the queue holds: the excess
                        must be a JSON 429, never a 5xx. Budgeted.

    Classification of answers:
    - "5xx": any 5xx status, except the timeouts a server documents, counted as "timeouts"
      instead: serve's 504 `{"error": {"code": "timeout"}}` (its per-request deadline,
      `--timeout-secs`) and retrieval's 408 from its `request_timeout_s` deadline (a 408 is
      still a 4xx, so it must be a JSON error too).
    - "non_json_4xx": a 4xx whose body is not a JSON object with an "error" key. Exceptions,
      counted as "protocol_4xx": an empty-body 400 / 414 / 431 to a request the HTTP parser
      (hyper) rejects before any route runs (bad bytes in the request line, header limits, a
      100 KB URL, broken framing). Those never reach the application, so the server cannot
      answer them with JSON; they are legitimate HTTP refusals. HEAD answers have no body by
      definition and are not checked either.
    - "connection_errors": a request that expected an answer got a reset/EOF. A reset after a
      body above the limit (the server answers 413 and closes without reading the rest) is
      "expected_resets" instead when no answer could be read.
    - "hangs": a request that expected an answer got none within --request-timeout.
    - "bad_2xx": a 2xx whose body is not what the route promises (informational).

    Exit code 0 only when 5xx == 0, non_json_4xx == 0, hangs == 0, stalls == 0 and the server
    is alive at the end (its pid exists and GET /health plus one valid request succeed).

Load mode (serve only)
    python3 scripts/chaos_http.py --url URL --kind serve --load --clients 64 --seconds S \
        [--max-tokens 16] [--pid PID]

    64 clients send valid chat completions (like scripts/load_chat.py, whose `percentile` is
    reused) for S seconds and report requests, failed, p50_s, p99_s, requests_per_s,
    tokens_per_s (from `usage.completion_tokens`) and RSS before/after/peak. Exit non-zero on
    any failed request or a dead server.

Output: one JSON object on stdout.
"""

import argparse
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_chat import percentile  # noqa: E402  (shared with the plain load test)

# --------------------------------------------------------------------------------------------
# Plumbing: process stats, raw sockets, response parsing, result bookkeeping
# --------------------------------------------------------------------------------------------


def run_threads(target, arg_tuples, timeout=None):
    """Runs `target(*args)` on one daemon thread per tuple in `arg_tuples` and waits for them
    all (each join bounded by `timeout` seconds when given)."""
    threads = [threading.Thread(target=target, args=tuple(a), daemon=True) for a in arg_tuples]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)

def rss_kib(pid):
    """VmRSS of `pid` in KiB, or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pid_alive(pid):
    """True when `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class RssMonitor(threading.Thread):
    """Samples the server's RSS twice a second; keeps the peak."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, None, threading.Event()

    def run(self):
        while self.pid and not self.stop.is_set():
            r = rss_kib(self.pid)
            if r is not None:
                self.peak = max(self.peak or 0, r)
            self.stop.wait(0.5)


class Response:
    """A parsed HTTP answer."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body


def read_response(f, head=False):
    """Reads one HTTP response from the buffered socket file `f` (Content-Length, chunked, or
    until EOF). Raises EOFError when the peer closed before a status line."""
    line = f.readline(70000)
    if not line:
        raise EOFError("connection closed before an answer")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {line[:80]!r}")
    status = int(parts[1])
    headers = {}
    while True:
        h = f.readline(70000)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if head or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(f.readline(1000).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while f.readline(1000) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += f.read(size)
            f.readline(10)
        return Response(status, headers, body)
    if "content-length" in headers:
        return Response(status, headers, f.read(int(headers["content-length"])))
    return Response(status, headers, f.read())


class Target:
    """Where the server is and how to talk to it."""

    def __init__(self, url, timeout):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout

    def connect(self, timeout=None):
        return socket.create_connection((self.host, self.port), timeout=timeout or self.timeout)

    def http(self, method, path, body=None, headers=None, timeout=None):
        """One request with http.client on a fresh connection."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            c.close()

    def raw(self, data, head=False, chunk=1 << 16, timeout=None):
        """Sends `data` on a fresh socket and reads one answer. A send failure (the server
        closed early, e.g. after a 413) does not stop us from reading what it answered.
        Returns (Response or None, send_error or None)."""
        s = self.connect(timeout)
        send_err = None
        try:
            try:
                for i in range(0, len(data), chunk):
                    s.sendall(data[i:i + chunk])
            except OSError as e:
                send_err = e
            f = s.makefile("rb")
            try:
                return read_response(f, head), send_err
            except (EOFError, ConnectionError) as e:
                if send_err is not None:
                    return None, send_err
                raise e
        finally:
            s.close()


def request_bytes(method, path, body=b"", headers=None, version=b"HTTP/1.1", close=True):
    """Builds a raw request. `path` and header values may hold any bytes."""
    if isinstance(path, str):
        path = path.encode()
    lines = [method.encode() + b" " + path + b" " + version, b"Host: 127.0.0.1"]
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    for k, v in hdrs.items():
        if v is None:
            continue
        lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else str(v).encode()))
    if body is not None and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class Raw(str):
    """A JSON value written verbatim (NaN, 1e999, `tru`): not representable by json.dumps."""


def dumps(obj):
    """json.dumps that writes Raw values verbatim."""
    raws = {}

    def sub(o):
        if isinstance(o, Raw):
            key = f"@@RAW{len(raws)}@@"
            raws[key] = str(o)
            return key
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        if isinstance(o, list):
            return [sub(v) for v in o]
        return o

    text = json.dumps(sub(obj))
    for key, val in raws.items():
        text = text.replace(f'"{key}"', val)
    return text.encode()


class Stats:
    """Counters shared by the worker threads."""

    def __init__(self, kind):
        self.kind = kind
        self.lock = threading.Lock()
        self.requests = 0
        self.by_status, self.cases, self.case_status = {}, {}, {}
        self.fivexx, self.timeouts, self.non_json_4xx, self.protocol_4xx = 0, 0, 0, 0
        self.conn_errors, self.expected_resets, self.hangs, self.bad_2xx = 0, 0, 0, 0
        self.stalls, self.disconnects, self.held_open = 0, 0, 0
        self.held_open_headers, self.large_rss_growth_kib, self.large_ok = 0, None, None
        self.fivexx_samples, self.non_json_samples, self.conn_samples = [], [], []
        self.bad_2xx_samples, self.stall_samples = [], []
        self.probe_latency_max = 0.0

    def _case(self, case, key):
        self.cases[case] = self.cases.get(case, 0) + 1
        cs = self.case_status.setdefault(case, {})
        cs[key] = cs.get(key, 0) + 1

    def answer(self, case, r, protocol=False, head=False, expect=None):
        """Records an HTTP answer. `protocol`: the request is malformed at the HTTP level, so an
        empty-body 400/414/431 from the parser is acceptable. `expect`: a function checking a
        2xx body (returns an error string or None)."""
        body = r.body or b""
        with self.lock:
            self.requests += 1
            s = str(r.status)
            self.by_status[s] = self.by_status.get(s, 0) + 1
            self._case(case, s)
            sample = {"case": case, "status": r.status, "body": body[:300].decode("utf-8", "replace")}
            if r.status >= 500:
                if self._is_timeout(r):
                    self.timeouts += 1
                else:
                    self.fivexx += 1
                    if len(self.fivexx_samples) < 8:
                        self.fivexx_samples.append(sample)
            elif 400 <= r.status < 500 and not head:
                if r.status == 408 and self.kind == "retrieval":
                    self.timeouts += 1  # documented, but must be JSON like any refusal
                if protocol and not body and r.status in (400, 414, 431):
                    self.protocol_4xx += 1
                elif not is_json_error(body):
                    self.non_json_4xx += 1
                    if len(self.non_json_samples) < 8:
                        self.non_json_samples.append(sample)
            elif 200 <= r.status < 300 and expect is not None and not head:
                err = expect(body)
                if err:
                    self.bad_2xx += 1
                    if len(self.bad_2xx_samples) < 5:
                        self.bad_2xx_samples.append(dict(sample, why=err))

    def _is_timeout(self, r):
        if self.kind == "serve" and r.status == 504:
            try:
                return json.loads(r.body)["error"]["code"] == "timeout"
            except (ValueError, KeyError, TypeError):
                return False
        return False

    def failure(self, case, exc, expected_reset=False):
        """Records a request that got no answer."""
        with self.lock:
            self.requests += 1
            if isinstance(exc, (socket.timeout, TimeoutError)):
                self.hangs += 1
                key = "hang"
            elif expected_reset:
                self.expected_resets += 1
                key = "reset_after_limit"
            else:
                self.conn_errors += 1
                key = "connection_error"
            self._case(case, key)
            if key != "reset_after_limit" and len(self.conn_samples) < 8:
                self.conn_samples.append({"case": case, "error": repr(exc)[:200]})

    def disconnected(self, case):
        """Records a request we abandoned on purpose (no answer expected)."""
        with self.lock:
            self.requests += 1
            self.disconnects += 1
            self._case(case, "client_disconnected")

    def held(self, case):
        """Records a stalled request the server neither answered nor closed in time."""
        with self.lock:
            self.requests += 1
            self.held_open += 1
            if "mid_headers" in case:
                self.held_open_headers += 1
            self._case(case, "held_open")

    def stall(self, case, latency, err=None):
        with self.lock:
            self.probe_latency_max = max(self.probe_latency_max, latency)
            if err is not None or latency > STALL_S:
                self.stalls += 1
                if len(self.stall_samples) < 5:
                    self.stall_samples.append({"case": case, "latency_s": round(latency, 2), "error": err})


def is_json_error(body):
    try:
        v = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(v, dict) and "error" in v


def expect_json_object(body):
    try:
        v = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "body is not JSON"
    return None if isinstance(v, dict) else "body is not a JSON object"


def expect_chat(body):
    try:
        v = json.loads(body)
        if v["object"] != "chat.completion" or not v["choices"]:
            return "not a chat.completion"
        return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "not a chat.completion"


def expect_sse(body):
    return None if body.rstrip().endswith(b"data: [DONE]") else "stream does not end in [DONE]"


STALL_S = 5.0  # a normal request slower than this during slowloris counts as a stall


# --------------------------------------------------------------------------------------------
# What a valid request looks like on each server
# --------------------------------------------------------------------------------------------


class Api:
    """Routes and valid bodies of one server kind."""

    def __init__(self, kind):
        self.kind = kind

    def route(self, rng):
        if self.kind == "serve":
            return "/v1/chat/completions"
        return rng.choice(["/queries", "/retrieve"])

    def valid(self, rng, path=None, stream=False):
        if self.kind == "serve":
            body = {
                "model": "sleuth",
                "messages": [{"role": "user", "content": f"Question {rng.randrange(10**6)}: who built the stadium?"}],
                "max_tokens": rng.randint(1, 4),
            }
            if stream:
                body["stream"] = True
            return body
        qs = [rng.choice(["kansas city stadium", "paris france", "generation x", "foo fighters song",
                          "capital of norway", "who wrote hamlet"]) for _ in range(rng.randint(1, 4))]
        if path == "/retrieve":
            return {"queries": qs, "topk": rng.randint(1, 5), "return_scores": rng.random() < 0.5}
        return {"queries": qs, "k": rng.randint(1, 5)}

    def expect(self, path):
        if path == "/v1/chat/completions":
            return expect_chat
        return expect_json_object

    def get_routes(self):
        return ["/health", "/v1/models"] if self.kind == "serve" else ["/health"]

    def post_routes(self):
        return ["/v1/chat/completions"] if self.kind == "serve" else ["/queries", "/retrieve"]


# --------------------------------------------------------------------------------------------
# Case families: each picks one variant with `rng`, sends it, records what came back
# --------------------------------------------------------------------------------------------


def send_json(ctx, case, path, body, headers=None, expect=None):
    """POSTs `body` (bytes) with http.client and records the answer."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    try:
        r = ctx.t.http("POST", path, body, h)
    except (OSError, http.client.HTTPException) as e:
        ctx.st.failure(case, e)
        return
    ctx.st.answer(case, r, expect=expect)


def send_raw(ctx, case, data, protocol=False, head=False, expect=None, big=False, timeout=None):
    """Sends raw bytes and records the answer. `big`: a body above the limit, after which a
    reset without an answer is expected."""
    try:
        r, send_err = ctx.t.raw(data, head=head, timeout=timeout)
    except (OSError, EOFError, ValueError) as e:
        ctx.st.failure(case, e)
        return
    if r is None:
        ctx.st.failure(case, send_err, expected_reset=big)
        return
    ctx.st.answer(case, r, protocol=protocol, head=head, expect=expect)


def case_valid(ctx, rng):
    api = ctx.api
    roll = rng.random()
    if roll < 0.15:
        path = rng.choice(api.get_routes())
        try:
            r = ctx.t.http("GET", path)
        except (OSError, http.client.HTTPException) as e:
            ctx.st.failure(f"valid/get{path}", e)
            return
        ctx.st.answer(f"valid/get{path}", r, expect=expect_json_object)
        return
    path = api.route(rng)
    if api.kind == "serve" and roll < 0.4:
        send_json(ctx, "valid/chat_stream", path, dumps(api.valid(rng, stream=True)), expect=expect_sse)
        return
    send_json(ctx, f"valid/post{path}", path, dumps(api.valid(rng, path)), expect=api.expect(path))


def case_malformed_json(ctx, rng):
    path = ctx.api.route(rng)
    good = dumps(ctx.api.valid(rng, path))
    variants = {
        "truncated": good[: rng.randrange(1, len(good) - 1)],
        "trailing_garbage": good + rng.choice([b"xyz", b"}", b"]]]", b",", b" {}", b"\x00"]),
        "two_objects": good + good,
        "empty": b"",
        "whitespace": b"  \n\t ",
        "null": b"null",
        "array": b"[" + good + b"]",
        "number": b"12345",
        "string": b'"hello"',
        "bool": b"true",
        "bom": b"\xef\xbb\xbf" + good,
        "single_quotes": good.replace(b'"', b"'"),
        "trailing_comma": good[:-1] + b",}",
        "comment": b"/* hi */" + good,
        "nul_bytes": b"\x00" * 64,
        "unbalanced": b'{"model": [{"a": }',
        "nan_literal": good[:-1] + b', "x": NaN}',
        "binary_noise": bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))),
    }
    name = rng.choice(sorted(variants))
    send_json(ctx, f"malformed_json/{name}", path, variants[name])


SERVE_BAD_FIELDS = {
    "model": [5, None, [], {}, "", "gpt-4", "x" * 10000],
    "messages": ["hi", 5, None, {}, [], ["hi"], [5], [None], [{"role": "user"}],
                 [{"role": "robot", "content": "x"}], [{"role": 5, "content": "x"}],
                 [{"role": "user", "content": 5}], [{"role": "user", "content": True}],
                 [{"role": "user", "content": [{"type": "text", "text": 5}]}],
                 [{"role": "user", "content": [{"type": "image_url"}]}],
                 [{"role": "user", "content": [5]}], [{"role": "assistant", "content": "x"}],
                 [{"role": "user", "content": "   "}], [{"role": "user", "content": None}],
                 [{"role": "user", "content": {"text": "x"}}],
                 [{"role": "system", "content": "s"}, {"role": "tool", "content": "t"}]],
    "max_tokens": [-1, 0, 10**30, 2**64, 2**63, 1.5, "4", True, 2049, Raw("1e308"), [], None],
    "max_completion_tokens": [-5, "x", 10**20, 0, 99999],
    "temperature": ["hot", "NaN", -1, 2.5, Raw("1e999"), Raw("-1e999"), Raw("NaN"),
                    Raw("Infinity"), [], {}, True, None, Raw("1e-999")],
    "top_p": [0, -0.5, 2, "0.9", Raw("NaN"), Raw("1e999"), None],
    "stream": ["yes", 1, [], {}, Raw("tru"), None],
    "n": [0, -1, 9, 10**9, "2", 2.5, 2**64],
    "stop": [5, [1], ["a", "b", "c", "d", "e"], "", [""], ["x" * 100000], {}, [None]],
    "seed": ["x", 1.5, 2**70, -1, -(2**63), Raw("1e400")],
    "stream_options": [True, {"include_usage": "yes"}, [], "x", {"include_usage": None}],
}

RETRIEVAL_BAD_FIELDS = {
    "queries": ["str", 5, None, {}, [1, 2], [None], [["nested"]], [], ["x"] * 10000,
                ["x"] * 1025, [""], ["a" * 100000], [True], ["ok", 5]],
    "k": [-1, 10**12, 2**64, "3", 1.5, 0, 101, 100, None, True, [], Raw("NaN"), Raw("1e999")],
    "return_scores": ["yes", 1, None, [], Raw("nul")],
}


def case_wrong_types(ctx, rng):
    path = ctx.api.route(rng)
    body = ctx.api.valid(rng, path)
    if ctx.api.kind == "serve":
        field = rng.choice(sorted(SERVE_BAD_FIELDS))
        i = rng.randrange(len(SERVE_BAD_FIELDS[field]))
        value = SERVE_BAD_FIELDS[field][i]
    else:
        fields = ["queries", "k"] + (["return_scores"] if path == "/retrieve" else [])
        field = rng.choice(fields)
        i = rng.randrange(len(RETRIEVAL_BAD_FIELDS[field]))
        value = RETRIEVAL_BAD_FIELDS[field][i]
        if field == "k" and path == "/retrieve":
            body.pop("topk", None)
            field = "topk"
    body[field] = value
    send_json(ctx, f"wrong_types/{field}={label(value)}", path, dumps(body))


def label(value):
    """A short, stable name for a bad value (used in case names)."""
    if isinstance(value, Raw):
        text = str(value)
    elif isinstance(value, list) and len(value) > 3:
        text = f"[{label(value[0])} x{len(value)}]"
    else:
        text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"


def case_missing_fields(ctx, rng):
    path = ctx.api.route(rng)
    body = ctx.api.valid(rng, path)
    if ctx.api.kind == "serve":
        variants = ["model", "messages", "both", "role", "content", "empty_object"]
    else:
        variants = ["queries", "empty_object", "only_k"]
    name = rng.choice(variants)
    if name == "empty_object":
        body = {}
    elif name == "both":
        body = {"max_tokens": 2}
    elif name == "role":
        body["messages"] = [{"content": "who?"}]
    elif name == "content":
        body["messages"] = [{"role": "user"}]
    elif name == "only_k":
        body = {"k": 3, "topk": 3}
    else:
        body.pop(name)
    send_json(ctx, f"missing_fields/{name}", path, dumps(body))


def case_unknown_fields(ctx, rng):
    path = ctx.api.route(rng)
    body = ctx.api.valid(rng, path)
    name = rng.choice(["extra", "many_extra", "duplicate_key", "nested_extra"])
    if name == "extra":
        body.update({"frequency_penalty": 0.5, "user": "u", "logit_bias": {"1": 5}, "": None,
                     "tools": [{"type": "function", "function": {"name": "x"}}]})
        data = dumps(body)
    elif name == "many_extra":
        body.update({f"field_{i}": i for i in range(5000)})
        data = dumps(body)
    elif name == "nested_extra":
        if ctx.api.kind == "serve":
            body["messages"][0].update({"name": "bob", "tool_call_id": 7, "extra": {"a": [1]}})
        else:
            body["__proto__"] = {"polluted": True}
        data = dumps(body)
    else:
        key = b'"model"' if ctx.api.kind == "serve" else b'"queries"'
        data = dumps(body)
        data = b"{" + key + (b': "other",' if ctx.api.kind == "serve" else b': 5,') + data[1:]
    send_json(ctx, f"unknown_fields/{name}", path, data,
              expect=ctx.api.expect(path) if name != "duplicate_key" else None)


def case_huge_body(ctx, rng):
    api = ctx.api
    path = api.route(rng)
    size = rng.randint(2, 6) << 20
    body = api.valid(rng, path)
    if api.kind == "serve":
        body["messages"][0]["content"] = "a " * (size // 2)
    else:
        body["queries"] = ["lorem ipsum " * 80] * (size // 1000)
    data = dumps(body)
    name = rng.choice(["content_length", "chunked", "lying_length_small", "lying_length_large",
                       "under_limit"])
    if name == "content_length":
        send_raw(ctx, "huge_body/content_length", request_bytes("POST", path, data), big=True)
    elif name == "chunked":
        step = 1 << 15
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + step]), data[i:i + step])
                          for i in range(0, len(data), step)) + b"0\r\n\r\n"
        send_raw(ctx, "huge_body/chunked",
                 request_bytes("POST", path, chunks, {"Transfer-Encoding": "chunked"}), big=True)
    elif name == "lying_length_small":
        # Claims 10 bytes, sends megabytes: the rest is parsed as a second (garbage) request.
        send_raw(ctx, "huge_body/lying_length_small",
                 request_bytes("POST", path, data, {"Content-Length": "10"}), big=True, protocol=True)
    elif name == "lying_length_large":
        # Claims 100 MB (over the limit): the server may refuse before reading anything.
        s = ctx.t.connect()
        try:
            s.sendall(request_bytes("POST", path, b"", {"Content-Length": str(100 << 20)}))
            s.sendall(data[:4096])
            s.shutdown(socket.SHUT_WR)
            r = read_response(s.makefile("rb"))
            ctx.st.answer("huge_body/lying_length_large", r)
        except (OSError, EOFError, ValueError) as e:
            ctx.st.failure("huge_body/lying_length_large", e, expected_reset=True)
        finally:
            s.close()
    else:
        # Just under the limit: serve must refuse the overlong prompt with a 400, retrieval
        # answers (a max-size batch of long queries).
        limit = ctx.body_limit
        if api.kind == "serve":
            body["messages"][0]["content"] = "b " * ((limit - 400) // 2)
        else:
            body["queries"] = ["history of the stadium in kansas city " * 50] * 1000
        data = dumps(body)
        assert len(data) < limit, len(data)
        send_raw(ctx, "huge_body/under_limit", request_bytes("POST", path, data), timeout=120)


def case_huge_headers(ctx, rng):
    path = rng.choice(ctx.api.get_routes())
    name = rng.choice(["value_64k", "count_200", "value_1m", "bad_name", "conflicting_length",
                       "te_and_cl", "bad_te", "negative_length", "folded_header"])
    get = lambda h: request_bytes("GET", path, None, h)  # noqa: E731
    post = ctx.api.post_routes()[0]
    body = dumps(ctx.api.valid(rng, post))
    data = {
        "value_64k": lambda: get({"X-Big": "a" * 65536}),
        "count_200": lambda: get({f"X-H{i}": "v" * 10 for i in range(200)}),
        "value_1m": lambda: get({"X-Big": "a" * (1 << 20)}),
        "bad_name": lambda: get({"X Bad\x01": "1"}),
        "conflicting_length": lambda: request_bytes(
            "POST", post, body, {"Content-Length": f"{len(body)}\r\nContent-Length: 3"}),
        "te_and_cl": lambda: request_bytes(
            "POST", post, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
            {"Transfer-Encoding": "chunked", "Content-Length": "4"}),
        "bad_te": lambda: request_bytes("POST", post, body, {"Transfer-Encoding": "gzip, zstd",
                                                             "Content-Length": None}),
        "negative_length": lambda: request_bytes("POST", post, body, {"Content-Length": "-5"}),
        "folded_header": lambda: get({"X-Fold": "a\r\n b"}),
    }[name]()
    send_raw(ctx, f"huge_headers/{name}", data, protocol=True)


def case_deep_nesting(ctx, rng):
    path = ctx.api.route(rng)
    depth = 100_000
    name = rng.choice(["brackets", "objects", "in_known_field", "in_unknown_field"])
    if name == "brackets":
        data = b"[" * depth
    elif name == "objects":
        data = b'{"a":' * depth
    else:
        body = ctx.api.valid(rng, path)
        field = ("messages" if ctx.api.kind == "serve" else "queries") if name == "in_known_field" else "zz"
        body[field] = Raw("[" * depth + "]" * depth)
        data = dumps(body)
    send_json(ctx, f"deep_nesting/{name}", path, data)


def case_invalid_utf8(ctx, rng):
    api = ctx.api
    path = api.route(rng)
    name = rng.choice(["raw_ff", "overlong", "utf8_surrogate", "lone_surrogate_escape",
                       "truncated_sequence", "latin1_body", "path_raw_bytes", "path_percent_ff",
                       "query_percent_ff", "header_bytes"])
    good = dumps(api.valid(rng, path))
    needle = b"who built" if api.kind == "serve" else b'"queries": ["'
    bad = {"raw_ff": b"\xff\xfe", "overlong": b"\xc0\xaf", "utf8_surrogate": b"\xed\xa0\x80",
           "lone_surrogate_escape": b"\\ud800", "truncated_sequence": b"\xe2\x82",
           "latin1_body": "caf\xe9".encode("latin-1")}
    if name in bad:
        data = good.replace(needle, needle + bad[name], 1)
        send_json(ctx, f"invalid_utf8/{name}", path, data)
    elif name == "path_raw_bytes":
        send_raw(ctx, "invalid_utf8/path_raw_bytes",
                 request_bytes("POST", path.encode() + b"\xff\xfe\x80", good), protocol=True)
    elif name == "path_percent_ff":
        send_json(ctx, "invalid_utf8/path_percent_ff", path + "%FF%FE%80", good)
    elif name == "query_percent_ff":
        send_json(ctx, "invalid_utf8/query_percent_ff", path + "?q=%FF%FE&x=%C3", good)
    else:
        send_raw(ctx, "invalid_utf8/header_bytes",
                 request_bytes("POST", path, good, {"X-Bytes": b"\xff\xfe\x80"}), protocol=True,
                 expect=api.expect(path))


def case_content_type(ctx, rng):
    api = ctx.api
    path = api.route(rng)
    body = api.valid(rng, path)
    good = dumps(body)
    name = rng.choice(["text_plain", "form", "multipart", "none", "utf16", "garbage_type"])
    if name == "text_plain":
        send_json(ctx, "content_type/text_plain", path, good, {"Content-Type": "text/plain"})
    elif name == "form":
        form = urllib.parse.urlencode({k: json.dumps(v) for k, v in body.items()}).encode()
        send_json(ctx, "content_type/form", path, form,
                  {"Content-Type": "application/x-www-form-urlencoded"})
    elif name == "multipart":
        b = b"--XyZ\r\nContent-Disposition: form-data; name=\"body\"\r\n\r\n" + good + b"\r\n--XyZ--\r\n"
        send_json(ctx, "content_type/multipart", path, b, {"Content-Type": "multipart/form-data; boundary=XyZ"})
    elif name == "none":
        send_raw(ctx, "content_type/none", request_bytes("POST", path, good, {"Content-Type": None}),
                 expect=api.expect(path))
    elif name == "utf16":
        send_json(ctx, "content_type/utf16", path, good.decode().encode("utf-16"),
                  {"Content-Type": "application/json; charset=utf-16"})
    else:
        send_raw(ctx, "content_type/garbage_type",
                 request_bytes("POST", path, good, {"Content-Type": "\x7f;;;=;"}), protocol=True,
                 expect=api.expect(path))


def case_wrong_method(ctx, rng):
    api = ctx.api
    name = rng.choice(["get_on_post", "put_on_post", "delete_on_post", "patch_on_post",
                       "options_on_post", "head_on_post", "post_on_get", "put_on_get",
                       "unknown_method"])
    post = rng.choice(api.post_routes())
    get = rng.choice(api.get_routes())
    body = dumps(api.valid(rng, post))
    method, path = {
        "get_on_post": ("GET", post), "put_on_post": ("PUT", post),
        "delete_on_post": ("DELETE", post), "patch_on_post": ("PATCH", post),
        "options_on_post": ("OPTIONS", post), "head_on_post": ("HEAD", post),
        "post_on_get": ("POST", get), "put_on_get": ("PUT", get),
        "unknown_method": ("BREW", post),
    }[name]
    send_raw(ctx, f"wrong_method/{name}", request_bytes(method, path, body), head=method == "HEAD")


def case_unknown_paths(ctx, rng):
    name = rng.choice(["root", "v2", "trailing_slash", "extra_segment", "double_slash",
                       "traversal", "encoded_traversal", "asterisk", "url_8k", "url_100k",
                       "query_string_huge", "absolute_form"])
    post = rng.choice(ctx.api.post_routes())
    path = {
        "root": "/", "v2": "/v2/chat/completions", "trailing_slash": post + "/",
        "extra_segment": post + "/x", "double_slash": "/" + post, "traversal": "/../../etc/passwd",
        "encoded_traversal": "/%2e%2e/%2e%2e/etc/passwd", "asterisk": "*",
        "url_8k": "/" + "a" * 8000, "url_100k": "/" + "a" * 100_000,
        "query_string_huge": "/health?" + "a=b&" * 2000, "absolute_form": "http://127.0.0.1/health",
    }[name]
    method = "POST" if name in ("trailing_slash", "extra_segment", "double_slash") else "GET"
    body = dumps(ctx.api.valid(rng, post)) if method == "POST" else None
    send_raw(ctx, f"unknown_paths/{name}", request_bytes(method, path, body),
             protocol=name in ("url_100k", "asterisk"))


def case_http10_pipeline(ctx, rng):
    api = ctx.api
    post = rng.choice(api.post_routes())
    name = rng.choice(["http10_get", "http10_post", "http10_keepalive", "pipeline"])
    if name == "http10_get":
        send_raw(ctx, "http10/get", b"GET /health HTTP/1.0\r\n\r\n", expect=expect_json_object)
        return
    if name == "http10_post":
        send_raw(ctx, "http10/post",
                 request_bytes("POST", post, dumps(api.valid(rng, post)), version=b"HTTP/1.0", close=False),
                 expect=api.expect(post))
        return
    if name == "http10_keepalive":
        reqs = [request_bytes("GET", "/health", None, {"Connection": "keep-alive"}, b"HTTP/1.0", False)] * 2
        reqs[-1] = request_bytes("GET", "/health", None, None, b"HTTP/1.0", False)
    else:
        reqs = []
        for i in range(rng.randint(3, 6)):
            kind = rng.choice(["valid", "bad_json", "get", "unknown"])
            if kind == "valid":
                reqs.append(request_bytes("POST", post, dumps(api.valid(rng, post)), close=False))
            elif kind == "bad_json":
                reqs.append(request_bytes("POST", post, b"{oops", close=False))
            elif kind == "get":
                reqs.append(request_bytes("GET", "/health", None, close=False))
            else:
                reqs.append(request_bytes("GET", "/nope", None, close=False))
        reqs.append(request_bytes("GET", "/health", None, close=True))
    case = "pipeline/mixed" if name == "pipeline" else "http10/keepalive"
    s = ctx.t.connect()
    try:
        s.sendall(b"".join(reqs))
        f = s.makefile("rb")
        for _ in reqs:
            try:
                r = read_response(f)
            except (OSError, EOFError, ValueError) as e:
                ctx.st.failure(case, e)
                continue
            ctx.st.answer(case, r)
    except OSError as e:
        ctx.st.failure(case, e)
    finally:
        s.close()


def case_slowloris(ctx, rng):
    """Trickles requests a byte at a time on several sockets; times normal requests meanwhile."""
    api = ctx.api
    n_sockets = rng.randint(4, 8)
    seconds = min(rng.uniform(3.0, 6.0), ctx.deadline - time.monotonic() - 1)
    if seconds < 1:
        return
    post = rng.choice(api.post_routes())
    results = []

    def trickle(i):
        finish = i % 2 == 0  # half complete their request, half give up mid-headers
        data = request_bytes("POST", post, dumps(api.valid(rng, post)))
        if not finish:
            data = data[: len(data) // 3]
        try:
            s = ctx.t.connect(timeout=seconds + 30)
        except OSError as e:
            results.append(("fail", e))
            return
        t0 = time.monotonic()
        try:
            pause = seconds / max(1, len(data))
            for b in data:
                s.sendall(bytes([b]))
                time.sleep(pause)
            if finish:
                results.append(("answer", read_response(s.makefile("rb"))))
            else:
                results.append(("gave_up", None))
        except (OSError, EOFError, ValueError) as e:
            # Headers still trickling past the server's header-read deadline: closed, as promised.
            past = time.monotonic() - t0 >= 0.9 * ctx.header_timeout
            results.append(("closed_at_deadline" if past else "fail", e))
        finally:
            s.close()

    threads = [threading.Thread(target=trickle, args=(i,), daemon=True) for i in range(n_sockets)]
    for t in threads:
        t.start()
    t_end = time.monotonic() + seconds * 0.8
    time.sleep(0.3)
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        err = None
        try:
            r = ctx.t.http("POST", post, dumps(api.valid(rng, post)), {"Content-Type": "application/json"},
                           timeout=STALL_S * 4)
            ctx.st.answer("slowloris/probe", r, expect=api.expect(post))
            # 429 (serve's queue full, e.g. during a concurrent burst) is still a prompt answer.
            if r.status not in (200, 429):
                err = f"status {r.status}"
        except (OSError, http.client.HTTPException) as e:
            ctx.st.failure("slowloris/probe", e)
            err = repr(e)
        ctx.st.stall("slowloris/probe", time.monotonic() - t0, err)
        time.sleep(0.5)
    for t in threads:
        t.join(seconds + 60)
    for what, r in results:
        if what == "answer":
            ctx.st.answer("slowloris/trickled", r, expect=api.expect(post))
        elif what == "gave_up":
            ctx.st.disconnected("slowloris/gave_up")
        elif what == "closed_at_deadline":
            ctx.st.disconnected("slowloris/closed_at_header_deadline")
        else:
            ctx.st.failure("slowloris/trickled", r)


def case_slow_hold(ctx, rng):
    """Two requests that stop arriving, one mid-headers, one mid-body, held for up to
    --hold-seconds: does the server answer them (retrieval: a JSON 408 after its
    request_timeout_s) or keep them open? The mid-headers one must be closed by the header-read
    deadline ("held_open_headers" otherwise, a failure); a kept-open mid-body one counts as
    "held_open" (informational). Budgeted: one run."""
    hold = min(ctx.hold_seconds, ctx.deadline - time.monotonic() - 5)
    if hold <= ctx.header_timeout:
        return  # too little time left to tell a closed connection from a held one
    if hold <= 1:
        return
    post = ctx.api.post_routes()[0]
    full = request_bytes("POST", post, dumps(ctx.api.valid(rng, post)))
    cut = full.index(b"\r\n\r\n") + 4
    parts = {"mid_headers": full[: cut // 2], "mid_body": full[: cut + 5]}

    def one(name, data):
        case = f"slow_hold/{name}"
        try:
            s = ctx.t.connect(timeout=hold)
        except OSError as e:
            ctx.st.failure(case, e)
            return
        try:
            s.sendall(data)
            ctx.st.answer(case, read_response(s.makefile("rb")))
        except (socket.timeout, TimeoutError):
            ctx.st.held(case)
        except (OSError, EOFError, ValueError):
            ctx.st.disconnected(case)  # the server closed the stalled connection: fine
        finally:
            s.close()

    run_threads(one, parts.items(), hold + 10)


def case_disconnect(ctx, rng):
    api = ctx.api
    post = rng.choice(api.post_routes())
    names = ["mid_headers", "mid_body", "before_answer"]
    if api.kind == "serve":
        names.append("mid_stream")
    else:
        names.append("mid_answer")
    name = rng.choice(names)
    body = api.valid(rng, post)
    case = f"disconnect/{name}"
    try:
        s = ctx.t.connect()
    except OSError as e:
        ctx.st.failure(case, e)
        return
    try:
        if name == "mid_headers":
            data = request_bytes("POST", post, dumps(body))
            s.sendall(data[: rng.randint(1, data.index(b"\r\n\r\n"))])
        elif name == "mid_body":
            data = request_bytes("POST", post, dumps(body))
            s.sendall(data[: len(data) - rng.randint(1, 20)])
        elif name == "before_answer":
            if api.kind == "serve":
                body["max_tokens"] = 64
            s.sendall(request_bytes("POST", post, dumps(body)))
            time.sleep(rng.uniform(0, 0.05))
        elif name == "mid_stream":
            body.update(stream=True, max_tokens=200)
            s.sendall(request_bytes("POST", post, dumps(body)))
            got = b""
            while b"data:" not in got:
                c = s.recv(4096)
                if not c:
                    break
                got += c
        else:  # retrieval: a big answer, read a few bytes of it
            body["queries"] = ["kansas city stadium history"] * 1000
            body["k" if post == "/queries" else "topk"] = 100
            s.sendall(request_bytes("POST", post, dumps(body)))
            s.recv(100)
        ctx.st.disconnected(case)
    except OSError as e:
        ctx.st.failure(case, e)
    finally:
        # RST instead of FIN: the harshest hang-up.
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        s.close()


def case_burst(ctx, rng):
    """More concurrent requests than serve's queue holds: the excess must be a JSON 429."""
    api = ctx.api
    n = 150

    def one(i):
        body = api.valid(random.Random(i))
        body["max_tokens"] = 16
        send_json(ctx, "burst/chat", "/v1/chat/completions", dumps(body), expect=expect_chat)

    run_threads(one, [(rng.randrange(10**9),) for _ in range(n)], ctx.t.timeout + 10)


LARGE_RSS_LIMIT_KIB = 1 << 20  # 1 GiB


def case_large_concurrent(ctx, rng):
    """Eight of the largest requests at once (1,024 queries × k = 100): every one answered, and
    the server's RSS growth while they run stays under LARGE_RSS_LIMIT_KIB."""
    words = ["kansas", "city", "stadium", "paris", "france", "song", "norway", "hamlet", "river"]
    qs = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(1024)]
    body = dumps({"queries": qs, "k": 100})
    mon = RssMonitor(ctx.pid)
    before = rss_kib(ctx.pid)
    mon.start()
    answered = []

    def one(i):
        try:
            r = ctx.t.http("POST", "/queries", body, {"Content-Type": "application/json"},
                           timeout=ctx.t.timeout)
            ok = r.status == 200 and len(json.loads(r.body)["answers"]) == 1024
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            ok = False
        with ctx.st.lock:
            ctx.st.requests += 1
            answered.append(ok)

    run_threads(one, [(i,) for i in range(8)], ctx.t.timeout + 10)
    time.sleep(0.6)
    mon.stop.set()
    with ctx.st.lock:
        if before is not None and mon.peak is not None:
            ctx.st.large_rss_growth_kib = mon.peak - before
        ctx.st.large_ok = len(answered) == 8 and all(answered)


# (function, weight, most runs per test; None = unlimited)
CASES = {
    "valid": (case_valid, 12, None),
    "malformed_json": (case_malformed_json, 10, None),
    "wrong_types": (case_wrong_types, 20, None),
    "missing_fields": (case_missing_fields, 6, None),
    "unknown_fields": (case_unknown_fields, 6, None),
    "huge_body": (case_huge_body, 2, None),
    "huge_headers": (case_huge_headers, 6, None),
    "deep_nesting": (case_deep_nesting, 4, None),
    "invalid_utf8": (case_invalid_utf8, 8, None),
    "content_type": (case_content_type, 6, None),
    "wrong_method": (case_wrong_method, 6, None),
    "unknown_paths": (case_unknown_paths, 6, None),
    "http10_pipeline": (case_http10_pipeline, 5, None),
    "disconnect": (case_disconnect, 6, None),
    "slowloris": (case_slowloris, 1, 4),
    "burst": (case_burst, 1, 2),
    "slow_hold": (case_slow_hold, 1, 1),
    "large_concurrent": (case_large_concurrent, 1, 1),
}


class Ctx:
    def __init__(self, target, api, stats, body_limit, hold_seconds, deadline, header_timeout, pid):
        self.t, self.api, self.st, self.body_limit = target, api, stats, body_limit
        self.hold_seconds, self.deadline = hold_seconds, deadline
        self.header_timeout, self.pid = header_timeout, pid


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------


def server_alive(target, api, pid):
    """The pid exists (when given) and GET /health plus one valid request succeed."""
    if pid and not pid_alive(pid):
        return False
    rng = random.Random(0)
    for attempt in range(3):
        try:
            if target.http("GET", "/health", timeout=15).status != 200:
                raise OSError("health not 200")
            path = api.post_routes()[0]
            r = target.http("POST", path, dumps(api.valid(rng, path)),
                            {"Content-Type": "application/json"}, timeout=60)
            if r.status == 200 and api.expect(path)(r.body) is None:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(1 + attempt)
    return False


def run_hostile(a, target, api):
    st = Stats(a.kind)
    body_limit = a.body_limit or ((1 << 20) if a.kind == "serve" else (4 << 20))
    t0 = time.monotonic()
    deadline = t0 + a.seconds
    ctx = Ctx(target, api, st, body_limit, a.hold_seconds, deadline, a.header_timeout, a.pid)
    names = [n for n in CASES if not (n == "burst" and a.kind != "serve")
             and not (n == "large_concurrent" and a.kind != "retrieval")
             and not (n == "slow_hold" and a.hold_seconds <= 0)]
    weights = [CASES[n][1] for n in names]
    runs = {n: 0 for n in names}
    runs_lock = threading.Lock()
    # Slow families are budgeted; scale their budget gently with the request count.
    budget = {n: (CASES[n][2] and max(1, min(CASES[n][2], a.requests // 2500 + 1))) for n in names}
    for once in ("slow_hold", "large_concurrent"):
        if once in budget:
            budget[once] = 1
    rss_before = rss_kib(a.pid)
    mon = RssMonitor(a.pid)
    mon.start()

    def worker(i):
        rng = random.Random(a.seed * 1000 + i)
        while time.monotonic() < deadline:
            with st.lock:
                if st.requests >= a.requests:
                    return
            name = rng.choices(names, weights)[0]
            if budget[name]:
                with runs_lock:
                    if runs[name] >= budget[name]:
                        continue
                    runs[name] += 1
            try:
                CASES[name][0](ctx, rng)
            except Exception as e:  # noqa: BLE001 - a bug in a case must not end the run
                st.failure(f"{name}/tester_exception", e)

    run_threads(worker, [(i,) for i in range(a.concurrency)])
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # let cancelled work drain before measuring
    alive = server_alive(target, api, a.pid)
    mon.stop.set()
    health = None
    try:
        health = json.loads(target.http("GET", "/health", timeout=10).body)
    except (OSError, ValueError, http.client.HTTPException):
        pass
    report = {
        "kind": a.kind,
        "requests": st.requests,
        "by_status": dict(sorted(st.by_status.items())),
        "5xx": st.fivexx,
        "5xx_samples": st.fivexx_samples,
        "timeouts": st.timeouts,
        "non_json_4xx": st.non_json_4xx,
        "non_json_4xx_samples": st.non_json_samples,
        "protocol_4xx": st.protocol_4xx,
        "connection_errors": st.conn_errors,
        "connection_error_samples": st.conn_samples,
        "expected_resets": st.expected_resets,
        "hangs": st.hangs,
        "client_disconnects": st.disconnects,
        "held_open": st.held_open,
        "held_open_mid_headers": st.held_open_headers,
        "large_concurrent_ok": st.large_ok,
        "large_concurrent_rss_growth_kib": st.large_rss_growth_kib,
        "stalls": st.stalls,
        "stall_samples": st.stall_samples,
        "slowloris_probe_latency_max_s": round(st.probe_latency_max, 3),
        "bad_2xx": st.bad_2xx,
        "bad_2xx_samples": st.bad_2xx_samples,
        "cases": dict(sorted(st.cases.items())),
        "case_status": dict(sorted(st.case_status.items())),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_kib(a.pid),
        "rss_kib_peak": mon.peak,
        "server_alive": alive,
        "server_health_after": health,
        "seconds": round(elapsed, 1),
    }
    ok = (st.fivexx == 0 and st.non_json_4xx == 0 and st.hangs == 0 and st.stalls == 0 and alive
          and st.held_open_headers == 0 and st.large_ok is not False
          and (st.large_rss_growth_kib or 0) <= LARGE_RSS_LIMIT_KIB)
    return report, ok


def run_load(a, target, api):
    """64 (--clients) clients sending valid chat completions for --seconds."""
    lat, failures, tokens = [], [], [0]
    lock = threading.Lock()
    rss_before = rss_kib(a.pid)
    mon = RssMonitor(a.pid)
    mon.start()
    deadline = time.monotonic() + a.seconds

    def client(i):
        conn = http.client.HTTPConnection(target.host, target.port, timeout=a.request_timeout)
        n = 0
        while time.monotonic() < deadline:
            body = json.dumps({
                "model": "sleuth",
                "messages": [{"role": "user", "content": f"Question {i}.{n}: who built the stadium?"}],
                "max_tokens": a.max_tokens,
            })
            n += 1
            t0 = time.monotonic()
            err, used = None, 0
            try:
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    err = f"{r.status}: {data[:200]!r}"
                else:
                    v = json.loads(data)
                    if v["choices"][0]["finish_reason"] not in ("stop", "length"):
                        err = f"finish_reason {v['choices'][0]['finish_reason']}"
                    used = v["usage"]["completion_tokens"]
            except Exception as e:  # noqa: BLE001 - any failure counts
                err = repr(e)
                conn.close()
                conn = http.client.HTTPConnection(target.host, target.port, timeout=a.request_timeout)
            dt = time.monotonic() - t0
            with lock:
                if err is None:
                    lat.append(dt)
                    tokens[0] += used
                else:
                    failures.append(err)
        conn.close()

    t_start = time.monotonic()
    run_threads(client, [(i,) for i in range(a.clients)])
    elapsed = time.monotonic() - t_start
    alive = server_alive(target, api, a.pid)
    mon.stop.set()
    report = {
        "kind": a.kind,
        "mode": "load",
        "clients": a.clients,
        "max_tokens": a.max_tokens,
        "seconds": round(elapsed, 1),
        "requests": len(lat) + len(failures),
        "failed": len(failures),
        "failure_samples": failures[:5],
        "p50_s": round(percentile(lat, 50) or 0, 3),
        "p90_s": round(percentile(lat, 90) or 0, 3),
        "p99_s": round(percentile(lat, 99) or 0, 3),
        "max_s": round(max(lat, default=0), 3),
        "requests_per_s": round(len(lat) / elapsed, 2),
        "tokens_per_s": round(tokens[0] / elapsed, 1),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_kib(a.pid),
        "rss_kib_peak": mon.peak,
        "server_alive": alive,
    }
    return report, not failures and alive


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--kind", required=True, choices=["serve", "retrieval"])
    ap.add_argument("--requests", type=int, default=1000, help="hostile requests to send (at least)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--pid", type=int, default=None, help="server pid (RSS and liveness)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="wall-time bound (hostile mode, default 900) or load duration (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load", action="store_true", help="load mode (serve only)")
    ap.add_argument("--clients", type=int, default=64, help="load mode: concurrent clients")
    ap.add_argument("--max-tokens", type=int, default=16, help="load mode: max_tokens per request")
    ap.add_argument("--request-timeout", type=float, default=None,
                    help="seconds a request may take before it counts as a hang (hostile mode, "
                         "default 60) or as failed (load mode, default 600, like load_chat.py)")
    ap.add_argument("--hold-seconds", type=float, default=None,
                    help="slow_hold case: how long to keep a stalled request open waiting for the "
                         "server to answer it (retrieval's deadline is 60 s); 0 disables; default "
                         "65 when --requests >= 2000, else 0 (keeps short runs short)")
    ap.add_argument("--header-timeout", type=float, default=10.0,
                    help="the server's header-read deadline in seconds (its --header-read-timeout, "
                         "default 10): slow_hold's mid-headers request must be closed by then")
    ap.add_argument("--body-limit", type=int, default=None,
                    help="the server's body limit (default: serve 1 MiB, retrieval 4 MiB)")
    a = ap.parse_args()
    if a.seconds is None:
        a.seconds = 60.0 if a.load else 900.0
    if a.request_timeout is None:
        a.request_timeout = 600.0 if a.load else 60.0
    if a.hold_seconds is None:
        a.hold_seconds = 65.0 if a.requests >= 2000 else a.header_timeout + 5.0
    target, api = Target(a.url, a.request_timeout), Api(a.kind)
    if a.load:
        if a.kind != "serve":
            ap.error("--load works with --kind serve only")
        report, ok = run_load(a, target, api)
    else:
        report, ok = run_hostile(a, target, api)
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
