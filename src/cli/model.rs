//! `sleuth generate` (plain text generation, no search) and `sleuth bench` (prefill and
//! decode throughput at batch 1 and G).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use super::load_model;
use sleuth::config::RunConfig;
use sleuth::env::PromptConfig;
use sleuth::model::backend::{self, Inference};
use sleuth::model::chat::{chatml, ChatMessage, ChatTemplate};
use sleuth::model::quant::Isa;
use sleuth::model::{
    text_of, BatchGenerator, DecodeWeights, Engine, LoadedModel, Sampler, SamplingConfig,
};

/// The model-file flag shared by `generate` and `bench`.
#[derive(Args)]
pub struct ModelArgs {
    /// Model: a GGUF file or a Hugging Face model directory (overrides the config's
    /// [model].path).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) applied
    /// on top of the model, as vLLM's and llama.cpp's --lora do.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Weights to decode from: q8_0 or q4_1 (the quantized CPU engine) or f32 (burn's
    /// forward pass).
    #[arg(long, default_value = "q8_0")]
    pub weights: DecodeWeights,
}

impl ModelArgs {
    /// Loads `--model`, or the default config's model when the flag is absent.
    fn load(&self, device: &burn::tensor::Device<Inference>) -> Result<LoadedModel<Inference>> {
        let default = RunConfig::default().model.path;
        load_model::<Inference>(
            self.model.as_ref().unwrap_or(&default),
            self.lora.as_deref(),
            device,
        )
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
    /// Wrap the prompt as one user turn in the model's own chat template (Jinja, from
    /// tokenizer_config.json or the GGUF), or ChatML when the model ships none.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object instead of text: prompt ids, new ids, text, and with --logits
    /// the first step's logits (f32 forward pass), for parity checks against transformers.
    #[arg(long)]
    pub json: bool,
    /// With --json, include the logits of the token after the prompt (`[vocab]` floats).
    #[arg(long, requires = "json")]
    pub logits: bool,
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
        let turn = [ChatMessage::new("user", &a.prompt)];
        match ChatTemplate::from_tokenizer(&m.tokenizer)? {
            Some(t) => t.render(&turn, true)?,
            None => chatml(&turn, true),
        }
    } else {
        a.prompt.clone()
    };
    let ids = m.tokenizer.with_bos(m.tokenizer.encode(&text, true)?);
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
    let new_ids = &row.tokens[row.prompt_len..];
    let out = text_of(&m.tokenizer, new_ids);
    if a.json {
        let mut obj = serde_json::json!({
            "prompt_ids": ids,
            "ids": new_ids,
            "text": out,
        });
        if a.logits {
            obj["first_logits"] = serde_json::json!(sleuth::model::load::to_host(
                m.model.next_token_logits(&ids, &device)
            ));
        }
        println!("{obj}");
    } else {
        println!("{out}");
    }
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
    let t_load = Instant::now();
    let m = a.model.load(&device)?;
    let load_s = t_load.elapsed().as_secs_f64();
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
            "load_seconds": (load_s * 100.0).round() / 100.0,
            "quantize_seconds": (quantize_s * 1000.0).round() / 1000.0, "decode_tok_s_b1": (b1 * 10.0).round() / 10.0,
            "decode_tok_s_bG": (bg * 10.0).round() / 10.0, "G": a.g, "prefill_tok_s": (prefill_tok_s * 10.0).round() / 10.0,
            "new_tokens": a.new_tokens, "prefill_tokens": long.len(), "repeats": a.repeats, "timing": "best of repeats"
        })
    );
    Ok(())
}

/// Flags of `sleuth export`.
#[derive(Args)]
pub struct ExportArgs {
    /// What to export: a run directory (its checkpoint's weights, the tokenizer of the model
    /// its config.toml names; a curriculum's folder exports its last phase with a checkpoint),
    /// a GGUF file, or a Hugging Face model directory.
    pub source: PathBuf,
    /// Output directory (must not exist; written to a hidden temporary folder and renamed
    /// when complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of the weights: f32 (lossless; sleuth trains in f32), bf16 or f16
    /// (half the bytes).
    #[arg(long, default_value = "f32")]
    pub dtype: sleuth::model::hf::export::ExportDtype,
    /// Split the weights into shards above this many bytes (model.safetensors.index.json).
    #[arg(long, default_value_t = 5_000_000_000)]
    pub max_shard_bytes: u64,
    /// With a run directory: the base model (GGUF file or HF directory) to take the
    /// tokenizer from, instead of the model named in the run's config.toml.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// With a model file or directory: apply this PEFT LoRA adapter first (the export then
    /// holds the merged weights, or with --lora-only the adapter again).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Write only the LoRA adapters, as a PEFT adapter directory (adapter_config.json,
    /// adapter_model.safetensors with PEFT's tensor names) that peft's
    /// PeftModel.from_pretrained and vLLM's --enable-lora load on the base model. Without it
    /// the adapters are folded into the weights of a full model directory.
    #[arg(long)]
    pub lora_only: bool,
}

/// The `config.toml` that names a run's base model: the run's own (`sleuth train`, `sleuth
/// sft`), else its parent's when the run is a phase folder of a curriculum (the parent holds
/// `curriculum.json` and the one config of all phases). `None` when neither exists.
fn run_config_path(run: &std::path::Path) -> Option<PathBuf> {
    let own = run.join("config.toml");
    if own.is_file() {
        return Some(own);
    }
    let parent = run.parent()?;
    let shared = parent.join("config.toml");
    (parent.join("curriculum.json").is_file() && shared.is_file()).then_some(shared)
}

/// `sleuth export`: writes a Hugging Face model directory and prints one JSON line (files
/// and sizes, tensors, parameters, seconds).
pub fn run_export(a: ExportArgs) -> Result<()> {
    use anyhow::Context;
    let t0 = Instant::now();
    let device = backend::device();
    // A run (a training run, a curriculum phase, or a curriculum's folder: its last phase with
    // a checkpoint) or else a model file / directory.
    let run = (sleuth::rl::checkpoint::exists(&a.source)
        || a.source.join("curriculum.json").is_file())
    .then(|| sleuth::rl::checkpoint::resolve(&a.source))
    .transpose()?;
    let (loaded, base) = if let Some(run) = run {
        let base = match &a.model {
            Some(m) => m.clone(),
            None => {
                let cfg_path = run_config_path(&run).with_context(|| {
                    format!(
                        "{}: no config.toml in the run or in its curriculum folder; pass --model to name the base model",
                        run.display()
                    )
                })?;
                RunConfig::load(&cfg_path)
                    .with_context(|| {
                        format!(
                            "{}: pass --model to name the base model",
                            cfg_path.display()
                        )
                    })?
                    .model
                    .path
            }
        };
        let mut loaded = load_model::<Inference>(&base, None, &device)?;
        (loaded.model, loaded.config) = sleuth::rl::checkpoint::load_saved(&run, &device)?;
        (loaded, base)
    } else {
        (
            load_model::<Inference>(&a.source, a.lora.as_deref(), &device)?,
            a.source.clone(),
        )
    };
    if a.lora_only {
        let report = sleuth::model::hf::peft::write_adapter(
            &loaded.model,
            &base.display().to_string(),
            &a.out,
            a.dtype,
        )
        .with_context(|| {
            format!(
                "exporting the adapters of {} to {}",
                a.source.display(),
                a.out.display()
            )
        })?;
        print_export(&report, ("format", "peft-lora".into()), a.dtype, t0);
        return Ok(());
    }
    let tokenizer_dir = sleuth::model::hf::is_hf_dir(&base).then_some(base.as_path());
    let opts = sleuth::model::hf::export::ExportOptions {
        dtype: a.dtype,
        max_shard_bytes: a.max_shard_bytes,
    };
    let report = sleuth::model::hf::export::export(
        &loaded.model,
        &loaded.config,
        &loaded.tokenizer,
        tokenizer_dir,
        &a.out,
        &opts,
    )
    .with_context(|| format!("exporting {} to {}", a.source.display(), a.out.display()))?;
    let architecture = loaded.config.architecture()?.hf_name();
    print_export(&report, ("architecture", architecture.into()), a.dtype, t0);
    Ok(())
}

/// Prints an export's one JSON line: output folder, `what` (the architecture, or the adapter
/// format), dtype, tensors, parameters, files with their sizes in bytes, and seconds.
fn print_export(
    report: &sleuth::model::hf::export::ExportReport,
    what: (&str, serde_json::Value),
    dtype: sleuth::model::hf::export::ExportDtype,
    t0: Instant,
) {
    let files: serde_json::Map<String, serde_json::Value> = report
        .files
        .iter()
        .map(|(n, b)| (n.clone(), (*b).into()))
        .collect();
    let mut line = serde_json::json!({
        "out": report.dir,
        "dtype": dtype.to_string(),
        "tensors": report.tensors,
        "parameters": report.parameters,
        "files": files,
        "seconds": (t0.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    });
    line[what.0] = what.1;
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::run_config_path;

    #[test]
    fn run_config_path_finds_the_run_then_the_curriculum_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let phase = tmp.path().join("02-coldstart-sft");
        std::fs::create_dir_all(&phase).unwrap();
        // A folder that is neither a run with a config nor a curriculum phase.
        assert_eq!(run_config_path(&phase), None);
        std::fs::write(tmp.path().join("config.toml"), "").unwrap();
        assert_eq!(
            run_config_path(&phase),
            None,
            "a parent without curriculum.json"
        );
        std::fs::write(tmp.path().join("curriculum.json"), "{}").unwrap();
        assert_eq!(
            run_config_path(&phase),
            Some(tmp.path().join("config.toml"))
        );
        std::fs::write(phase.join("config.toml"), "").unwrap();
        assert_eq!(run_config_path(&phase), Some(phase.join("config.toml")));
    }
}
