//! `sleuth generate` (plain text generation, no search) and `sleuth bench` (prefill and
//! decode throughput at batch 1 and G).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use super::load_model;
use crate::config::RunConfig;
use crate::env::PromptConfig;
use crate::model::backend::{self, Inference};
use crate::model::quant::Isa;
use crate::model::{
    text_of, BatchGenerator, DecodeWeights, Engine, LoadedModel, Sampler, SamplingConfig,
};

/// The model-file flag shared by `generate` and `bench`.
#[derive(Args)]
pub struct ModelArgs {
    /// GGUF model file (overrides the config's [model].path).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weights to decode from: q8_0 or q4_1 (the quantized CPU engine) or f32 (burn's
    /// forward pass).
    #[arg(long, default_value = "q8_0")]
    pub weights: DecodeWeights,
}

impl ModelArgs {
    /// Loads `--model`, or the default config's model when the flag is absent.
    fn load(&self, device: &burn::tensor::Device<Inference>) -> Result<LoadedModel<Inference>> {
        let default = RunConfig::default().model.path;
        load_model::<Inference>(self.model.as_ref().unwrap_or(&default), device)
    }
}

/// Flags of `sleuth generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// The model file.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text. Special tokens such as <|im_start|> are parsed.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (SmolLM2 / ChatML).
    #[arg(long)]
    pub chat: bool,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Flags of `sleuth bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The model file.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch size for the batched measurement.
    #[arg(long, default_value_t = 4)]
    pub g: usize,
    /// Tokens to decode per measurement.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Prompt length in tokens for the prefill measurement.
    #[arg(long, default_value_t = 256)]
    pub prefill_tokens: usize,
    /// Timed runs per figure after one untimed warm-up; the fastest is reported (as the
    /// llama.cpp peer script does).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

/// `sleuth generate`: prints the completion on stdout and prefill/decode timing on stderr.
pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let device = backend::device();
    let m = a.model.load(&device)?;
    let text = if a.chat {
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            a.prompt
        )
    } else {
        a.prompt.clone()
    };
    let ids = m.tokenizer.encode(&text, true)?;
    let eos: Vec<u32> = m.tokenizer.eos_id().into_iter().collect();
    let engine = Engine::new(&m.model, a.model.weights);
    let t0 = Instant::now();
    let mut gen = BatchGenerator::new(
        &engine,
        &m.tokenizer,
        std::slice::from_ref(&ids),
        ids.len() + a.max_new_tokens + 8,
        a.stop.clone(),
        eos,
    )?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: 0,
        seed: a.seed,
    });
    let t1 = Instant::now();
    gen.generate(&mut sampler, &[a.max_new_tokens]);
    let decode_s = t1.elapsed().as_secs_f64();
    let row = &gen.rows()[0];
    let out = text_of(&m.tokenizer, &row.tokens[row.prompt_len..]);
    println!("{out}");
    eprintln!(
        "[{} prompt tokens in {:.2}s; {} new tokens in {:.2}s = {:.1} tok/s; stop: {:?}; {}]",
        ids.len(),
        prefill_s,
        row.generated,
        decode_s,
        row.generated as f64 / decode_s.max(1e-9),
        row.stop,
        engine_name(a.model.weights)
    );
    Ok(())
}

/// The engine's name for reports: burn's backend, or the quantized format and ISA path.
fn engine_name(w: DecodeWeights) -> String {
    match w.quant_format() {
        None => backend::name().to_string(),
        Some(f) => format!("sleuth quantized {} ({})", f.name(), Isa::active().name()),
    }
}

/// `sleuth bench`: one JSON line with prefill tokens/s and decode tokens/s at batch 1 and G.
pub fn run_bench(a: BenchArgs) -> Result<()> {
    let device = backend::device();
    let m = a.model.load(&device)?;
    let prompt = PromptConfig::default();
    let base = m.tokenizer.encode(
        &prompt.render("Which stadium hosts the Kansas City Chiefs?")?,
        false,
    )?;
    let mut long = Vec::new();
    while long.len() < a.prefill_tokens {
        long.extend_from_slice(&base);
    }
    long.truncate(a.prefill_tokens);
    let short: Vec<u32> = base[..base.len().min(32)].to_vec();
    let cap = a.prefill_tokens.max(short.len()) + a.new_tokens + 8;
    let t_quant = Instant::now();
    let engine = Engine::new(&m.model, a.model.weights);
    let quantize_s = t_quant.elapsed().as_secs_f64();
    let prefill = || -> Result<f64> {
        let t0 = Instant::now();
        let _ = BatchGenerator::new(
            &engine,
            &m.tokenizer,
            std::slice::from_ref(&long),
            cap,
            vec![],
            vec![],
        )?;
        Ok(long.len() as f64 / t0.elapsed().as_secs_f64())
    };
    let best = |f: &dyn Fn() -> Result<f64>| -> Result<f64> {
        let mut top = 0f64;
        for _ in 0..a.repeats.max(1) {
            top = top.max(f()?);
        }
        Ok(top)
    };
    // One untimed warm-up first: the first call touches every page of the weights.
    prefill()?;
    let prefill_tok_s = best(&prefill)?;
    let decode = |g: usize| -> Result<f64> {
        let prompts: Vec<Vec<u32>> = (0..g).map(|_| short.clone()).collect();
        let mut gen = BatchGenerator::new(&engine, &m.tokenizer, &prompts, cap, vec![], vec![])?;
        let mut sampler = Sampler::new(SamplingConfig {
            temperature: 1.0,
            seed: 1,
            ..Default::default()
        });
        let t = Instant::now();
        gen.generate(&mut sampler, &vec![a.new_tokens; g]);
        let n: usize = gen.rows().iter().map(|r| r.generated).sum();
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let _ = decode(1)?; // warm-up
    let b1 = best(&|| decode(1))?;
    let bg = best(&|| decode(a.g))?;
    println!(
        "{}",
        serde_json::json!({
            "system": "sleuth", "engine": engine_name(a.model.weights), "weights": a.model.weights.name(),
            "quantize_seconds": (quantize_s * 1000.0).round() / 1000.0, "decode_tok_s_b1": (b1 * 10.0).round() / 10.0,
            "decode_tok_s_bG": (bg * 10.0).round() / 10.0, "G": a.g, "prefill_tok_s": (prefill_tok_s * 10.0).round() / 10.0,
            "new_tokens": a.new_tokens, "prefill_tokens": long.len(), "repeats": a.repeats, "timing": "best of repeats"
        })
    );
    Ok(())
}
