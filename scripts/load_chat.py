"""Load test for an OpenAI-compatible chat server: C concurrent clients for D seconds.

Usage: python scripts/load_chat.py BASE_URL [--clients 32] [--seconds 60] [--max-tokens 16]
       [--api-key KEY] [--stream] [--prompts FILE] [--system FILE] [--model NAME]
       [--temperature T] [--top-p P] [--extra-body JSON] [--include-usage] [--warmup N]
Standard library only. Each client loops: POST /v1/chat/completions, wait for the whole
answer (or the whole stream through `data: [DONE]`), record latency, status and the answer's
completion tokens. Prints one JSON object: requests, failures, requests/s, latency
p50/p90/p99/max in seconds, completion (and prompt) tokens with tokens/s, and the server's
/health counters (null for a server without /health). Exits 1 if any request failed.

Questions: without `--prompts`, request n of client i asks "Question i.n: who built the
stadium?" (as before); with `--prompts FILE` (one question per line), the k-th request sent
by any client asks line k mod len(lines), so two servers loaded alike answer the same
questions in the same proportions. `--system FILE` sends the file's text as a system message
first. Tokens: `usage.completion_tokens` of each successful answer; for a stream the usage
chunk when the server sends one (`--include-usage` asks for it), otherwise the number of
chunks carrying content or reasoning text (roughly one per token for sleuth and llama.cpp).
"""

import argparse
import collections
import http.client
import itertools
import json
import statistics
import sys
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def read_stream(data: bytes):
    """(ok, completion tokens, prompt tokens or None, finish reason, counted from) of an SSE body."""
    chunks, usage, finish = 0, None, None
    for line in data.splitlines():
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        try:
            obj = json.loads(line[6:])
        except ValueError:
            continue
        if "error" in obj:
            return False, 0, None, None, None
        if obj.get("usage"):
            usage = obj["usage"]
        for ch in obj.get("choices") or []:
            delta = ch.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                chunks += 1
            finish = ch.get("finish_reason") or finish
    ok = data.rstrip().endswith(b"data: [DONE]")
    if usage and usage.get("completion_tokens") is not None:
        return ok, usage["completion_tokens"], usage.get("prompt_tokens"), finish, "usage"
    return ok, chunks, None, finish, "chunks"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--prompts", default=None, help="file of questions, one a line, cycled")
    ap.add_argument("--system", default=None, help="file whose text is sent as a system message")
    ap.add_argument("--model", default="sleuth", help="the request's `model` field")
    ap.add_argument("--temperature", type=float, default=None, help="sent when given")
    ap.add_argument("--top-p", type=float, default=None, help="sent when given")
    ap.add_argument("--extra-body", default=None,
                    help="JSON object merged into every request body (server-specific fields)")
    ap.add_argument("--include-usage", action="store_true",
                    help="with --stream, ask for the usage chunk (stream_options.include_usage)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="requests sent one by one before the clients start, not counted")
    a = ap.parse_args()
    url = urllib.parse.urlparse(a.base)
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = f"Bearer {a.api_key}"
    questions = None
    if a.prompts:
        with open(a.prompts, encoding="utf-8") as f:
            questions = [q.strip() for q in f if q.strip()]
        if not questions:
            sys.exit(f"{a.prompts}: no questions")
    system = None
    if a.system:
        with open(a.system, encoding="utf-8") as f:
            system = f.read().strip()
    extra = json.loads(a.extra_body) if a.extra_body else {}
    if not isinstance(extra, dict):
        sys.exit("--extra-body must be a JSON object")
    sent = itertools.count()  # next() is atomic under the GIL

    def body_for(i: int, n: int) -> str:
        if questions is None:
            q = f"Question {i}.{n}: who built the stadium?"
        else:
            q = questions[next(sent) % len(questions)]
        messages = [{"role": "user", "content": q}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        body = {"model": a.model, "messages": messages, "max_tokens": a.max_tokens, "stream": a.stream}
        if a.temperature is not None:
            body["temperature"] = a.temperature
        if a.top_p is not None:
            body["top_p"] = a.top_p
        if a.stream and a.include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(extra)
        return json.dumps(body)

    def one(conn, body):
        """Sends one request on `conn`: (error or None, completion tokens, prompt tokens,
        finish reason, counted from)."""
        conn.request("POST", "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return f"{resp.status}: {data[:200]!r}", 0, None, None, None
        if a.stream:
            ok, toks, ptoks, finish, src = read_stream(data)
        else:
            obj = json.loads(data)
            finish = obj["choices"][0]["finish_reason"]
            ok = finish in ("stop", "length")
            usage = obj.get("usage") or {}
            toks, ptoks, src = usage.get("completion_tokens"), usage.get("prompt_tokens"), "usage"
            if toks is None:
                toks, src = 0, "none"
        return (None if ok else f"{resp.status}: {data[:200]!r}"), toks, ptoks, finish, src

    for w in range(a.warmup):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        err = one(conn, body_for(-1, w))[0]
        conn.close()
        if err is not None:
            print("warm-up failed:", err, file=sys.stderr)
            return 1
    sent = itertools.count()  # the measured run starts at the first question again

    latencies, failures, lock = [], [], threading.Lock()
    tokens, prompt_tokens = [], []
    finishes, sources = collections.Counter(), collections.Counter()
    deadline = time.monotonic() + a.seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        n = 0
        while time.monotonic() < deadline:
            body = body_for(i, n)
            n += 1
            t0 = time.monotonic()
            toks = ptoks = finish = src = None
            try:
                err, toks, ptoks, finish, src = one(conn, body)
            except Exception as e:  # noqa: BLE001 - any failure counts
                err = repr(e)
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
            dt = time.monotonic() - t0
            with lock:
                if err is None:
                    latencies.append(dt)
                    tokens.append(toks)
                    if ptoks is not None:
                        prompt_tokens.append(ptoks)
                    finishes[finish] += 1
                    sources[src] += 1
                else:
                    failures.append(err)
        conn.close()

    t_start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start
    try:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        health = json.loads(resp.read()) if resp.status == 200 else {}
    except Exception:  # noqa: BLE001 - a server without /health (llama.cpp's) still gets a report
        health = {}
    completion = sum(tokens)
    report = {
        "clients": a.clients,
        "seconds": round(elapsed, 1),
        "max_tokens": a.max_tokens,
        "stream": a.stream,
        "requests": len(latencies) + len(failures),
        "failures": len(failures),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "latency_p50_s": round(percentile(latencies, 50) or 0, 3),
        "latency_p90_s": round(percentile(latencies, 90) or 0, 3),
        "latency_p99_s": round(percentile(latencies, 99) or 0, 3),
        "latency_max_s": round(max(latencies, default=0), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
        "completion_tokens": completion,
        "tokens_per_s": round(completion / elapsed, 2),
        "tokens_per_request": round(completion / len(tokens), 2) if tokens else None,
        "prompt_tokens_per_request": round(statistics.fmean(prompt_tokens), 1) if prompt_tokens else None,
        "finish_reasons": dict(finishes),
        "tokens_from": dict(sources),
        "server": health.get("stats"),
    }
    print(json.dumps(report))
    for f in failures[:5]:
        print("failure:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
