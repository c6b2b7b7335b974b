//! Times the pieces of one policy update of the default model (for optimisation work):
//! the reference forward (no gradients), the policy forward to token log-probs, the loss and
//! backward pass, and the AdamW step, on synthetic sequences.
//!
//! `cargo run --release --example profile_update -- [SEQS] [TOKENS] [POLICY_FRACTION] [REPS]
//! [PROMPT]` (defaults 4 256 1.0 3 32). The sequences are one group: they share their first
//! `PROMPT` tokens, which the forward runs once ([`sleuth::model::Llama::forward_shared`]);
//! `SLEUTH_SHARE_PROMPT=0` runs every sequence whole, for before/after figures in one build.
//! `POLICY_FRACTION` is the share of each sequence's scored tokens
//! that carry loss (mask 1); the rest stand for inserted documents (mask 0), as in a search
//! episode, where typically 20–40 % of tokens are the policy's. `SLEUTH_FULL_HEAD=1` scores
//! every position instead of the policy tokens only (the earlier path), for comparison.
//! `SLEUTH_MODEL=PATH` profiles another model (a GGUF file or a Hugging Face directory, e.g.
//! a random-weight Qwen2.5-0.5B-shaped one from `scripts/reference/record_hf_fixtures.py
//! --random-shape qwen2.5-0.5b`); token ids are drawn from its vocabulary. The last line
//! printed is the process's peak RSS. `SLEUTH_PRECISION=bf16` runs the linear layers' products
//! in bf16 on AMX tiles (`[train] precision = "bf16"`), where the CPU has them.
//! `SLEUTH_LORA=RANK` trains LoRA adapters of that rank (α = 2 · rank, all seven targets)
//! beside the frozen base instead of every weight (`[train] lora`), for the LoRA / full
//! fine-tuning comparison of one RL update.
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use sleuth::model::backend::{self, Train};
use sleuth::model::fused::Precision;
use sleuth::model::load;
use sleuth::rl::loss::{pack, policy_loss, token_logprobs_entropy, KlEstimator, LossInputs};

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (seqs, tokens, frac, reps, prompt) = (
        arg(0, 4.0) as usize,
        arg(1, 256.0) as usize,
        arg(2, 1.0),
        arg(3, 3.0) as usize,
        arg(4, 32.0) as usize,
    );
    let share = std::env::var("SLEUTH_SHARE_PROMPT").map_or(true, |v| v != "0");
    // `SLEUTH_FULL_HEAD=1` runs the output head over every position (the path before
    // `PackedBatch::scored`), for before/after figures in one build.
    let full_head = std::env::var("SLEUTH_FULL_HEAD").is_ok_and(|v| v == "1");
    // As the `sleuth` binary does (`SLEUTH_SYSTEM_MALLOC=1` to compare without).
    backend::retain_freed_memory();
    let device = backend::device();
    let path = std::env::var("SLEUTH_MODEL")
        .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".to_string());
    let t_load = Instant::now();
    // `SLEUTH_PRECISION=bf16`: the linear layers' products in bf16 on AMX tiles
    // (`[train] precision`), where the CPU has them.
    let precision = match std::env::var("SLEUTH_PRECISION").as_deref() {
        Ok("bf16") => Precision::Bf16.effective(),
        _ => Precision::F32,
    };
    let model = load::<Train>(std::path::Path::new(&path), &device)
        .expect("run scripts/setup first (or set SLEUTH_MODEL to a model)")
        .model
        .with_precision(precision);
    let lora_rank: Option<usize> = std::env::var("SLEUTH_LORA")
        .ok()
        .and_then(|v| v.parse().ok());
    let model = match lora_rank {
        Some(rank) => model.with_lora(
            &sleuth::model::LoraConfig {
                rank,
                alpha: 2.0 * rank as f64,
                ..Default::default()
            },
            0,
        ),
        None => model,
    };
    println!(
        "training {}",
        match lora_rank {
            Some(r) => format!(
                "LoRA adapters of rank {r} ({} weights)",
                model.lora_params()
            ),
            None => "every weight".to_string(),
        }
    );
    println!(
        "loaded {path} in {:.2} s, precision {precision:?}",
        secs(t_load)
    );
    let reference = model.valid();
    let mut optim = AdamWConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init::<Train, _>();
    let mut model = model;

    // Synthetic episodes of one group: a shared `prompt`-token prompt, then alternating
    // policy (mask 1) and document (mask 0) spans so `frac` of the rest carries loss.
    let vocab = model.vocab_size() as u32;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % vocab as u64) as u32
    };
    let prompt = prompt.min(tokens - 2);
    let shared_prompt: Vec<u32> = (0..prompt).map(|_| next()).collect();
    let episodes: Vec<(Vec<u32>, Vec<u8>)> = (0..seqs)
        .map(|_| {
            let mut toks = shared_prompt.clone();
            toks.extend((prompt..tokens).map(|_| next()));
            let mask: Vec<u8> = (0..tokens)
                .map(|i| {
                    let j = i.saturating_sub(prompt);
                    u8::from(i >= prompt && ((j % 100) as f64) < frac * 100.0)
                })
                .collect();
            (toks, mask)
        })
        .collect();
    let batch: Vec<(&[u32], &[u8], usize)> = episodes
        .iter()
        .map(|(t, m)| (&t[..], &m[..], prompt))
        .collect();
    let policy_tokens: usize = episodes
        .iter()
        .map(|(_, m)| m.iter().map(|&x| x as usize).sum::<usize>())
        .sum();
    println!(
        "{seqs} sequences x {tokens} tokens ({prompt}-token shared prompt, run {}), {policy_tokens} policy tokens, backend {}, head over {}",
        if share { "once" } else { "per sequence" },
        backend::name(),
        if full_head { "all positions" } else { "policy tokens" }
    );
    for rep in 0..reps {
        let p = pack::<<Train as AutodiffBackend>::InnerBackend>(&batch, share, &device);
        let t = Instant::now();
        let ref_scored = (!full_head).then(|| p.scored.clone());
        let ref_lp = token_logprobs_entropy(
            &reference,
            p.tokens.clone(),
            p.start,
            p.shared,
            1.0,
            false,
            ref_scored,
        )
        .0;
        let _ = ref_lp.clone().into_data();
        let t_ref = secs(t);

        let t = Instant::now();
        let toks = Tensor::<Train, 2, Int>::from_inner(p.tokens.clone());
        let scored = (!full_head).then(|| Tensor::<Train, 1, Int>::from_inner(p.scored.clone()));
        let (logp, _) = token_logprobs_entropy(&model, toks, p.start, p.shared, 1.0, false, scored);
        let [b, tp] = logp.dims();
        let adv: Vec<f32> = (0..b * tp)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let inputs = LossInputs {
            old_logp: logp.clone().detach(),
            ref_logp: Some(Tensor::from_inner(ref_lp)),
            advantages: Tensor::from_data(TensorData::new(adv, [b, tp]), &device),
            mask: Tensor::from_inner(p.mask.clone()),
            is_weight: None,
        };
        let (loss, _) = policy_loss(
            logp,
            &inputs,
            0.2,
            0.001,
            KlEstimator::K3,
            policy_tokens as f64,
        );
        let _ = loss.clone().into_data();
        let t_fwd = secs(t);

        let t = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t_bwd = secs(t);

        let t = Instant::now();
        model = optim.step(1e-6, model, grads);
        let _ = model.embed_tokens.val().slice([0..1, 0..1]).into_data();
        let t_opt = secs(t);
        println!(
            "rep {rep}: reference forward {t_ref:.2} s, policy forward+loss {t_fwd:.2} s, backward {t_bwd:.2} s, AdamW {t_opt:.2} s, total {:.2} s",
            t_ref + t_fwd + t_bwd + t_opt
        );
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!("peak RSS: {}", line.trim_start_matches("VmHWM:").trim());
        }
    }
}
