"""TRL's half of issue 12's benchmark 4c: one GRPO step without search, timed, with
`trl.GRPOTrainer` on the CPU (the sleuth half is `examples/bench_grpo.rs`;
`scripts/bench-grpo` runs both and prints the ratio).

    python scripts/reference/trl_grpo_step.py --prompts-file PROMPTS.json \
        [--new-tokens 128] [--g 8] [--steps 2] [--warmup 1] [--threads N]

PROMPTS.json is what `cargo run --release --example bench_grpo -- --prompts-out FILE` writes:
sleuth's rendered prompts, text and token ids, so both systems start from the same tokens
(the output says whether transformers' tokenizer gives sleuth's ids for the same text).

What one step is, set to match sleuth's step: the same GGUF, dequantized to float32 by
transformers; the 2 prompts, `num_generations` = G samples each, sampled at temperature 1
without top-k / top-p; every sample exactly `--new-tokens` tokens (`min_new_tokens` =
`max_new_tokens` in the generation kwargs: end-of-sequence is suppressed until the budget);
the same toy reward (+1 for a completion with an even number of characters, −1 otherwise);
`beta = 0` (no reference model), clip ε 0.2; micro-batches of `--micro-batch` sequences
(sleuth's default 2) with gradient accumulation so that one optimizer step consumes all
2 × G samples, generated once in one batch (TRL's default `steps_per_generation`); AdamW at
sleuth's defaults (lr 1e-6 constant, weight decay 0.01, β 0.9 / 0.999, ε 1e-8, global
gradient-norm clip 1.0). Float32 throughout (TRL defaults to bf16) and activations kept for
the backward pass (TRL defaults to gradient checkpointing, which recomputes them; sleuth does
not; `--gradient-checkpointing` turns it back on); no vLLM, no logging.

Timed: `--warmup` optimizer steps (default 1) run first and are not counted, then `--steps`
(default 2). A step's time runs from the trainer's `on_step_begin` to its `on_step_end`
callback (its generation, every micro-batch's forward and backward, clipping and the AdamW
step); `rollout_s` is the part spent in `_generate_and_score_completions` (tokenizing,
generation, decoding, reward, advantages) and `update_s` the rest. Prints one JSON line with
the same keys as the sleuth example, plus the library versions.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float | None:
    """The process's peak resident set size (`VmHWM` of /proc/self/status), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def even_length(completions, **_kwargs) -> list[float]:
    """+1 for an even number of characters, −1 otherwise (sleuth's toy reward): every group
    gets reward variance, so every sample carries gradient."""
    return [1.0 if len(c) % 2 == 0 else -1.0 for c in completions]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf", help="GGUF file")
    p.add_argument("--prompts-file", required=True, help="sleuth's rendered prompts (JSON)")
    p.add_argument("--g", type=int, default=8, help="samples per prompt (num_generations)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens every sample generates")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (sleuth's default)")
    p.add_argument("--micro-batch", type=int, default=2, help="sequences per forward/backward")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (default: the CPUs this process may use, as rayon's pool)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (TRL's default; sleuth keeps them)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    prompts = json.loads(Path(args.prompts_file).read_text())
    texts = [p["text"] for p in prompts]
    samples = len(texts) * args.g
    if samples % args.micro_batch:
        raise SystemExit(f"--micro-batch {args.micro_batch} must divide {samples} samples")

    model_path = Path(args.model)
    # Unpacked into a plain dense float32 model at load time, as sleuth dequantizes for
    # training (without `dequantize=True` transformers may keep GGUF blocks, and Trainer
    # refuses to fine-tune a model flagged as quantized).
    model = AutoModelForCausalLM.from_pretrained(
        model_path.parent,
        gguf_file=model_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    if getattr(model, "is_quantized", False) or any(
        p.dtype != torch.float32 for p in model.parameters()
    ):
        raise SystemExit("expected a dense float32 model after dequantizing the GGUF")
    tokenizer = AutoTokenizer.from_pretrained(model_path.parent, gguf_file=model_path.name)
    hf_ids = [tokenizer(t)["input_ids"] for t in texts]
    ids_match = all(h == p["ids"] for h, p in zip(hf_ids, prompts))

    class Timed(GRPOTrainer):
        """Records the seconds and generated tokens of each generation round."""

        def __init__(self, *a, **kw):
            self.bench_rollout_s: list[float] = []
            self.bench_generated: list[int] = []
            super().__init__(*a, **kw)

        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.bench_rollout_s.append(time.perf_counter() - t)
            self.bench_generated.append(int(out["completion_mask"].sum()))
            return out

    class StepTimer(TrainerCallback):
        """Wall-clock seconds of each optimizer step."""

        def __init__(self):
            self.t0 = 0.0
            self.step_s: list[float] = []

        def on_step_begin(self, *_args, **_kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_args, **_kwargs):
            self.step_s.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            use_cpu=True,
            bf16=False,
            fp16=False,
            gradient_checkpointing=args.gradient_checkpointing,
            seed=args.seed,
            max_steps=args.warmup + args.steps,
            per_device_train_batch_size=args.micro_batch,
            gradient_accumulation_steps=samples // args.micro_batch,
            num_generations=args.g,
            max_completion_length=args.new_tokens,
            generation_kwargs={"min_new_tokens": args.new_tokens},
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.0,
            epsilon=0.2,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.01,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            max_grad_norm=1.0,
            use_vllm=False,
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            log_completions=False,
        )
        trainer = Timed(
            model=model,
            reward_funcs=[even_length],
            args=config,
            train_dataset=Dataset.from_list([{"prompt": t} for t in texts]),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()

    w = args.warmup
    step_s = timer.step_s[w:]
    rollout_s, generated = trainer.bench_rollout_s[w:], trainer.bench_generated[w:]
    if len(step_s) != args.steps or len(rollout_s) != args.steps:
        raise SystemExit(
            f"expected {args.steps} timed steps with one generation each, got {len(step_s)} steps "
            f"and {len(rollout_s)} generations"
        )

    def mean(xs):
        return sum(xs) / max(len(xs), 1)

    tokens = mean(generated)
    print(
        json.dumps(
            {
                "system": "trl",
                "step_s": mean(step_s),
                "rollout_s": mean(rollout_s),
                "update_s": mean([s - r for s, r in zip(step_s, rollout_s)]),
                "generated_tokens_per_step": tokens,
                "tokens_per_sample_mean": tokens / samples,
                "step_s_per_1k_generated_tokens": mean(step_s) / max(tokens, 1) * 1000,
                "peak_rss_mib": peak_rss_mib(),
                "threads": torch.get_num_threads(),
                "steps_timed": len(step_s),
                "step_s_each": step_s,
                "prompts": len(texts),
                "g": args.g,
                "max_new_tokens": args.new_tokens,
                "prompt_tokens": [len(i) for i in hf_ids],
                "prompt_ids_match_sleuth": ids_match,
                "micro_batch": args.micro_batch,
                "gradient_checkpointing": args.gradient_checkpointing,
                "lr": args.lr,
                "trl": trl.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
