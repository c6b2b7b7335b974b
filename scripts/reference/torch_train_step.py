"""The PyTorch peer of `examples/profile_update.rs`: one policy-update step of the default
model in fp32 with transformers — forward to token log-probs, a clipped-surrogate loss over
the policy tokens, backward, AdamW — on the same synthetic batch shape, threads and GGUF
weights (transformers dequantizes the GGUF on load).

    python scripts/reference/torch_train_step.py [SEQS] [TOKENS] [POLICY_FRACTION] [REPS]

Prints one line per repetition with the seconds of each part, then the peak RSS.
Needs `torch`, `transformers` and `gguf` (see requirements.txt); reads
`models/SmolLM2-135M-Instruct.Q4_1.gguf`.
"""

import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    defaults = ["4", "256", "1.0", "3"]
    argv = sys.argv[1:] + defaults[len(sys.argv) - 1 :]
    seqs, tokens, frac, reps = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        "models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32
    )
    model.config.use_cache = False
    reference = AutoModelForCausalLM.from_pretrained(
        "models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32
    ).eval()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-6)
    prompt = min(32, tokens // 2)
    ids = torch.randint(0, model.config.vocab_size, (seqs, tokens))
    pos = torch.arange(tokens - 1)
    j = (pos + 1 - prompt).clamp(min=0)
    mask = ((pos + 1 >= prompt) & ((j % 100).float() < frac * 100)).float().expand(seqs, -1)
    adv = torch.where(torch.arange(seqs * (tokens - 1)) % 2 == 0, 1.0, -1.0).view(seqs, -1)
    print(
        f"{seqs} sequences x {tokens} tokens, {int(mask.sum())} policy tokens, "
        f"torch {torch.__version__} fp32, {torch.get_num_threads()} threads"
    )
    for rep in range(reps):
        t = time.perf_counter()
        with torch.no_grad():
            ref_logits = reference(ids).logits[:, :-1]
            ref_lp = torch.log_softmax(ref_logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        t_ref = time.perf_counter() - t

        t = time.perf_counter()
        logits = model(ids).logits[:, :-1]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        ratio = torch.exp(logp - logp.detach())
        surr = torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
        r = ref_lp - logp
        kl = torch.exp(r) - r - 1
        loss = ((-surr + 0.001 * kl) * mask).sum() / mask.sum()
        t_fwd = time.perf_counter() - t

        t = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter() - t

        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        t_opt = time.perf_counter() - t
        print(
            f"rep {rep}: reference forward {t_ref:.2f} s, policy forward+loss {t_fwd:.2f} s, "
            f"backward {t_bwd:.2f} s, AdamW {t_opt:.2f} s, total {t_ref + t_fwd + t_bwd + t_opt:.2f} s"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
