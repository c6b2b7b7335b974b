#!/usr/bin/env python3
"""Record llama.cpp's greedy ids on the default GGUF, for the quantized engine's parity test.

llama.cpp (weight repacking off: it segfaulted here with it on) decodes the file's own Q4_1 blocks (activations quantized to Q8_1 blocks, as
sleuth's Q4_1 engine does); the test (`tests/model_quant.rs`) checks that sleuth's Q4_1
engine produces the same greedy ids for the first `compare_first` tokens. The prompt is the
one of `tests/fixtures/greedy_parity.json` (transformers' fixture).

`compare_first` is the number of leading ids sleuth matched when this was recorded, capped at
the first position where llama.cpp's own top-2 logit margin is under 0.05 (a near-tie that
summation order alone can flip).

Usage (the reference venv of scripts/reference/requirements.txt; only numpy and
llama-cpp-python are needed):

    .venv-ref/bin/python scripts/reference/record_quant_fixture.py [--new-tokens 32] [--matched N]

Writes tests/fixtures/llama_cpp_greedy.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import llama_cpp as L

from llamacpp_decode_bench import Batch, Model, decode, _silence_logs

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = REPO / "tests" / "fixtures" / "llama_cpp_greedy.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--matched", type=int, default=None,
                    help="leading ids sleuth's Q4_1 engine matched (sets compare_first)")
    args = ap.parse_args()
    _silence_logs()
    L.llama_backend_init()
    prompt = json.loads((REPO / "tests/fixtures/greedy_parity.json").read_text())["prompt_ids"]
    model = Model(MODEL, n_threads=2, extra_bufts=False)
    ctx = model.new_context(n_ctx=len(prompt) + args.new_tokens + 8, n_batch=512, n_seq_max=1)
    batch = Batch(max(len(prompt), 1), 1)
    ids, margins = [], []
    batch.clear()
    for j, t in enumerate(prompt):
        batch.add(t, j, 0, j == len(prompt) - 1)
    decode(ctx, batch)
    pos, idx = len(prompt), len(prompt) - 1
    for _ in range(args.new_tokens):
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, idx), shape=(model.n_vocab,))
        top2 = np.sort(logits)[-2:]
        margins.append(float(top2[1] - top2[0]))
        tok = int(logits.argmax())
        ids.append(tok)
        batch.clear()
        idx = batch.add(tok, pos, 0, True)
        pos += 1
        decode(ctx, batch)
    batch.free()
    L.llama_free(ctx)
    model.free()
    tie = next((i for i, m in enumerate(margins) if m < 0.05), len(ids))
    compare = min(tie, args.matched if args.matched is not None else len(ids))
    OUT.write_text(json.dumps({
        "model": MODEL.name,
        "model_sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
        "reference": f"llama-cpp-python {L.__version__}, CPU, greedy",
        "prompt_ids": prompt,
        "greedy_ids": ids,
        "top2_margins": [round(m, 4) for m in margins],
        "first_near_tie": tie,
        "compare_first": compare,
    }, indent=1) + "\n")
    print(f"wrote {OUT}: {len(ids)} ids, first near-tie at {tie}, compare_first {compare}")


if __name__ == "__main__":
    main()
