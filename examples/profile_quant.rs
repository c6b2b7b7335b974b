//! Times the quantized decode engine by part on the default model (for optimisation work):
//! `cargo run --release --example profile_quant -- [q8_0|q4_1] [ROWS] [DECODE_STEPS]`.
//!
//! Prints the quantization time, the repacking time of the tiled GEMM, the effective weight
//! bandwidth of the output head and of one layer's products at `ROWS` activation rows, and
//! the time of a whole decode step.
use std::time::Instant;

use sleuth::model::backend::{self, Inference};
use sleuth::model::load_gguf;
use sleuth::model::quant::{Isa, QActs, QMatrix, QuantFormat, QuantLlama};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let format = match args.get(1).map(String::as_str) {
        Some("q4_1") => QuantFormat::Q4_1,
        _ => QuantFormat::Q8_0,
    };
    let rows: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let m = load_gguf::<Inference>(
        std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &backend::device(),
    )
    .expect("run scripts/setup first");
    let t = Instant::now();
    let q = QuantLlama::from_llama(&m.model, format);
    println!(
        "quantize {}: {:.2} s, {:.1} MB of weights, isa {}",
        format.name(),
        t.elapsed().as_secs_f64(),
        q.weight_bytes() as f64 / 1e6,
        Isa::active().name()
    );
    // The first product of each matrix on AVX-512 VNNI or AVX2 repacks it for the tiled GEMM.
    let mut cache = q.new_cache(1, 8);
    let t = Instant::now();
    q.prefill_row(0, &[1], &mut cache);
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    q.prefill_row(0, &[2], &mut cache);
    println!(
        "first forward {:.3} s, second {:.3} s (the difference: repacking for the GEMM)",
        first,
        t.elapsed().as_secs_f64()
    );
    let isa = Isa::active();
    let bench = |name: &str, w: &QMatrix| {
        let x: Vec<f32> = (0..rows * w.cols())
            .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let acts = QActs::quantize(&x, rows, w.cols());
        let _ = w.matmul(&acts, isa);
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(w.matmul(&acts, isa));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:>10} [{} x {}] x {rows} rows: {:.3} ms, {:.1} GB/s of weights",
            w.rows(),
            w.cols(),
            s * 1e3,
            w.bytes() as f64 / s / 1e9
        );
    };
    let hidden = m.config.hidden_size;
    let head = QMatrix::quantize(
        &m.model
            .embed_tokens
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap(),
        m.config.vocab_size,
        hidden,
        QuantFormat::Q8_0,
    );
    bench("head", &head);
    let inter = m.config.intermediate_size;
    let up: Vec<f32> = (0..2 * inter * hidden)
        .map(|i| ((i * 31) % 101) as f32 / 101.0 - 0.5)
        .collect();
    bench(
        "gate_up",
        &QMatrix::quantize(&up, 2 * inter, hidden, format),
    );
    let down: Vec<f32> = (0..inter * hidden)
        .map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5)
        .collect();
    bench("down", &QMatrix::quantize(&down, hidden, inter, format));

    let mut cache = q.new_cache(rows, 512);
    for r in 0..rows {
        q.prefill_row(r, &[1, 2, 3, 4, 5, 6, 7, 8], &mut cache);
    }
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let t = Instant::now();
    for s in 0..steps {
        let toks: Vec<u32> = (0..rows).map(|r| (100 + s * 7 + r) as u32).collect();
        std::hint::black_box(q.decode_step(&toks, &vec![true; rows], &mut cache));
    }
    let s = t.elapsed().as_secs_f64() / steps as f64;
    println!(
        "decode step x {rows} rows: {:.2} ms ({:.1} tok/s, {:.1} GB/s of weights)",
        s * 1e3,
        rows as f64 / s,
        q.weight_bytes() as f64 / s / 1e9
    );
}
