#!/usr/bin/env python3
"""sleuth's LoRA adapters against Hugging Face PEFT, both ways (issue 32).

Modes (run from the repository root, in an environment with torch, transformers and peft:
scripts/reference/requirements.txt)::

    # 1. (Re)write tests/fixtures/hf/llama-lora/: a PEFT adapter made by peft itself on the
    #    tiny random Llama of tests/fixtures/hf/llama (rank 4, alpha 8, all seven projections,
    #    A and B both random: peft's init_lora_weights=False, so the adapter moves the logits),
    #    with reference.json: the prompt ids of the base fixture and the adapted model's logits
    #    of the next token after them, as PeftModel computes them. tests/model_hf.rs loads the
    #    base with this adapter and must get the same logits.
    python scripts/reference/check_peft.py

    # 2. Check an adapter sleuth wrote (`sleuth export RUN --lora-only`) on its base (an HF
    #    folder, e.g. `sleuth export BASE.gguf --out DIR`): PeftModel.from_pretrained(base, DIR)
    #    greedy-decodes the prompt of FILE, which is `sleuth generate --model BASE --lora ADAPTER
    #    --weights f32 --json --logits` output ({"prompt_ids", "ids", "first_logits"}). Prints one
    #    JSON line; exit status 1 if max |logit diff| > --tol (1e-3) or a greedy id differs.
    python scripts/reference/check_peft.py --check-adapter ADAPTER --base BASE --sleuth-json FILE

Everything is deterministic for the recorded torch / transformers / peft versions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
import peft
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests/fixtures/hf/llama"
OUT = ROOT / "tests/fixtures/hf/llama-lora"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_f32(path: Path):
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    ).eval()


def next_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0, -1].float()


def greedy(model, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(next_logits(model, ids).argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def record() -> None:
    prompt_ids = json.loads((BASE / "reference.json").read_text())["prompt_ids"]
    base = load_f32(BASE)
    base_logits = next_logits(base, prompt_ids)
    torch.manual_seed(0)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    model = get_peft_model(base, cfg).eval()
    logits = next_logits(model, prompt_ids)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(OUT))
    # No machine path in the repository, and no generated model card.
    (OUT / "README.md").unlink(missing_ok=True)
    cfg_path = OUT / "adapter_config.json"
    written = json.loads(cfg_path.read_text())
    written["base_model_name_or_path"] = "tests/fixtures/hf/llama"
    cfg_path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    ref = {
        "base": "tests/fixtures/hf/llama",
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "rank": 4,
        "alpha": 8,
        "targets": TARGETS,
        "prompt_ids": prompt_ids,
        "first_logits": [round(float(x), 6) for x in logits],
        "max_abs_change_from_base": float((logits - base_logits).abs().max()),
    }
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps({k: v for k, v in ref.items() if k not in ("first_logits", "prompt_ids")}))


def check(adapter: Path, base_dir: Path, sleuth_json: Path, tol: float) -> int:
    want = json.loads(sleuth_json.read_text())
    prompt_ids = [int(i) for i in want["prompt_ids"]]
    sleuth_ids = [int(i) for i in want["ids"]]
    sleuth_logits = torch.tensor(want["first_logits"], dtype=torch.float32)
    model = PeftModel.from_pretrained(load_f32(base_dir), str(adapter)).eval()
    logits = next_logits(model, prompt_ids)
    base_logits = next_logits(load_f32(base_dir), prompt_ids)
    ids = greedy(model, prompt_ids, len(sleuth_ids))
    diff = float((sleuth_logits - logits).abs().max())
    first_mismatch = next((i for i, (a, b) in enumerate(zip(sleuth_ids, ids)) if a != b), None)
    ok = diff <= tol and first_mismatch is None
    print(json.dumps({
        "adapter": str(adapter),
        "base": str(base_dir),
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "n_prompt": len(prompt_ids),
        "n_new": len(sleuth_ids),
        "max_abs_logit_diff": diff,
        "adapter_moves_logits_by": float((logits - base_logits).abs().max()),
        "ids_match": first_mismatch is None,
        "first_mismatch": first_mismatch,
        "tolerance": tol,
        "ok": ok,
    }))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-adapter", type=Path)
    ap.add_argument("--base", type=Path)
    ap.add_argument("--sleuth-json", type=Path)
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    if a.check_adapter:
        if not (a.base and a.sleuth_json):
            ap.error("--check-adapter needs --base and --sleuth-json")
        return check(a.check_adapter, a.base, a.sleuth_json, a.tol)
    record()
    return 0


if __name__ == "__main__":
    sys.exit(main())
