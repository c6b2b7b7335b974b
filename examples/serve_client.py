"""Ask a running `sleuth serve` a question with the official `openai` Python client.

    # terminal 1: the agent (the default model; add --checkpoint runs/NAME for a trained one)
    bin/sleuth serve --config envs/stage2.toml --port 8080
    # terminal 2 (pip install openai)
    python3 examples/serve_client.py [http://127.0.0.1:8080/v1] ["QUESTION"]

The endpoint is OpenAI's chat completions API. The agent searches while it reasons: the
server runs every query the model writes against its index and inserts the passages, so one
request may run several searches before the answer comes back. The reply's `content` is the
answer; `reasoning_content` is the trajectory (reasoning, queries, inserted documents); each
search is also reported as a `tool_calls` entry named `search`, so clients that show tool use
can display it. With `stream=True` the reasoning arrives as it is generated.
"""

import json
import sys

from openai import OpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
question = sys.argv[2] if len(sys.argv) > 2 else "Which stadium do the Kansas City Chiefs play in?"
# `sleuth serve --api-key KEY` (or SLEUTH_API_KEY) makes the key required; otherwise any.
client = OpenAI(base_url=base_url, api_key="unused")

# 1. One answer, greedy.
reply = client.chat.completions.create(
    model="sleuth",
    messages=[{"role": "user", "content": question}],
    temperature=0,
    max_tokens=256,
)
message = reply.choices[0].message
for call in message.tool_calls or []:
    print("search:", json.loads(call.function.arguments))
print("answer:", message.content)
print("finish:", reply.choices[0].finish_reason, "| usage:", reply.usage)

# 2. The same question streamed: reasoning (with documents) first, then the answer.
stream = client.chat.completions.create(
    model="sleuth",
    messages=[{"role": "user", "content": question}],
    temperature=0,
    max_tokens=256,
    stream=True,
)
for chunk in stream:
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    reasoning = (delta.model_extra or {}).get("reasoning_content")
    if reasoning:
        print(reasoning, end="", flush=True)
    if delta.content:
        print(delta.content, end="", flush=True)
print()
