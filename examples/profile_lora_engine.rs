//! What a LoRA run's rollout engine costs on the default model, for its two placements of the
//! adapters: folded into the weights and re-quantized whole after every update
//! (`QuantLlama::from_llama`), or the frozen base quantized once with the adapters applied
//! beside it in f32 (`QuantLlama::from_base`, then `set_adapters` per update; QLoRA's idea).
//!
//! `cargo run --release --example profile_lora_engine -- [q8_0|q4_1] [RANK] [REPS]`
//! (defaults q8_0, 16, 7). The adapters sit on all seven linear layers of every decoder layer,
//! with `B` drawn nonzero so they change the output. Prints the per-update cost of each
//! placement (best of `REPS`), then decode at batch 1 and 8 (32 tokens after a 64-token
//! prompt) and a 256-token prefill, in tokens per second: medians of `REPS` rounds in which the
//! two engines alternate, and the median of the per-round ratios.
use std::time::Instant;

use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use sleuth::model::backend::{self, Inference};
use sleuth::model::quant::Isa;
use sleuth::model::{load_gguf, Llama, LoraConfig, LoraTarget, QuantFormat, QuantLlama};

/// Best wall time of `reps` runs of `f`, in seconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Decode tokens per second at `rows` rows: a 64-token prompt prefilled into row 0 and forked,
/// then 32 timed decode steps (best of `reps`).
fn decode_rate(q: &QuantLlama, rows: usize, reps: usize) -> f64 {
    let steps = 32;
    let prompt: Vec<u32> = (0..64).map(|i| 100 + i * 13).collect();
    let toks: Vec<u32> = (0..rows as u32).map(|r| 200 + r).collect();
    let secs = (0..reps)
        .map(|_| {
            let mut cache = q.new_cache(rows, 128);
            q.prefill_row(0, &prompt, &mut cache);
            cache.fork_row(0, &(1..rows).collect::<Vec<_>>());
            let t = Instant::now();
            for _ in 0..steps {
                std::hint::black_box(q.decode_step(&toks, &vec![true; rows], &mut cache));
            }
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (steps * rows) as f64 / secs
}

fn prefill_rate(q: &QuantLlama, reps: usize) -> f64 {
    let prompt: Vec<u32> = (0..256).map(|i| 100 + i * 7).collect();
    256.0
        / best(reps, || {
            let mut cache = q.new_cache(1, 256);
            std::hint::black_box(q.prefill_row(0, &prompt, &mut cache));
        })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let format = match args.get(1).map(String::as_str) {
        Some("q4_1") => QuantFormat::Q4_1,
        _ => QuantFormat::Q8_0,
    };
    let rank: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(7);
    let device = backend::device();
    let gguf = load_gguf::<Inference>(
        std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &device,
    )
    .expect("run scripts/setup first");
    let cfg = LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        ..Default::default()
    };
    let mut model: Llama<Inference> = gguf.model.with_lora(&cfg, 0);
    for layer in 0..model.layers.len() {
        for t in LoraTarget::ALL {
            let lin = model.target_mut(layer, t);
            let lora = lin.lora.as_mut().expect("every target has an adapter");
            let dims = lora.b.val().dims();
            lora.b = Param::from_tensor(Tensor::random(
                dims,
                Distribution::Uniform(-1e-3, 1e-3),
                &device,
            ));
        }
    }
    println!(
        "{} adapters of rank {rank} on all seven targets ({:.1} M weights), isa {}, {} threads",
        format.name(),
        model.lora_params() as f64 / 1e6,
        Isa::active().name(),
        rayon::current_num_threads()
    );

    let fold = best(reps, || {
        std::hint::black_box(QuantLlama::from_llama(&model, format));
    });
    let build = best(reps, || {
        std::hint::black_box(QuantLlama::from_base(&model, format));
    });
    let mut beside = QuantLlama::from_base(&model, format);
    let refresh = best(reps, || beside.set_adapters(&model));
    println!("per update: fold + re-quantize {fold:.3} s; adapters beside: set_adapters {refresh:.4} s ({:.0}x less; first build {build:.3} s)", fold / refresh);

    let folded = QuantLlama::from_llama(&model, format);
    println!(
        "weights read per token: folded {:.1} MB, beside {:.1} MB",
        folded.weight_bytes() as f64 / 1e6,
        beside.weight_bytes() as f64 / 1e6
    );
    // The two engines alternate, one run each per round, so the machine's drift hits both.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, f) in [
        (
            "decode b=1",
            &(|q: &QuantLlama| decode_rate(q, 1, 1)) as &dyn Fn(&QuantLlama) -> f64,
        ),
        ("decode b=8", &|q: &QuantLlama| decode_rate(q, 8, 1)),
        ("prefill 256", &|q: &QuantLlama| prefill_rate(q, 1)),
    ] {
        let runs: Vec<(f64, f64)> = (0..reps).map(|_| (f(&folded), f(&beside))).collect();
        let ratio = median(runs.iter().map(|(a, b)| b / a).collect());
        let (a, b) = (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        );
        println!("{name:>11}: folded {a:7.1} tok/s, beside {b:7.1} tok/s (median of {reps} alternating runs; ratio {ratio:.2}x)");
    }
}
