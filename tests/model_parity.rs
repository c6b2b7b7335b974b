//! Parity of the burn forward pass with PyTorch/transformers (fp32, same dequantized weights):
//! greedy decoding from fixed prompt ids gives the same 64 ids, and the first step's logits
//! agree within [`LOGIT_TOL`]. The reference values were recorded once by
//! `scripts/reference/record_fixtures.py` into `tests/fixtures/greedy_parity.json`.
//!
//! Also checks the KV-cache paths (prefill, batched decode, forked rows) against the
//! cache-free forward pass on a tiny random model.

mod common;

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use sleuth::model::backend::{self, Inference};
use sleuth::model::{
    load_gguf, text_of, BatchGenerator, KvCache, Llama, LlamaConfig, Sampler, SamplingConfig,
};

/// Largest allowed |logit − reference| at the first step. Logits are O(30); f32 GEMMs that sum
/// in a different order than PyTorch's differ; measured here: 5.2e-5.
const LOGIT_TOL: f32 = 1e-3;

#[test]
fn greedy_ids_and_first_logits_match_transformers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} missing (run scripts/setup)", path.display());
        return;
    }
    let fx = common::fixture("greedy_parity.json");
    let device = backend::device();
    let m = load_gguf::<Inference>(&path, &device).unwrap();
    let cfg = &fx["config"];
    assert_eq!(
        m.config.num_hidden_layers as u64,
        cfg["n_layers"].as_u64().unwrap()
    );
    assert_eq!(
        m.config.num_key_value_heads as u64,
        cfg["n_kv_heads"].as_u64().unwrap()
    );
    assert_eq!(m.config.rope_theta, cfg["rope_theta"].as_f64().unwrap());
    assert!(m.config.tie_word_embeddings);

    let prompt = common::ids(&fx["prompt_ids"]);
    assert_eq!(
        m.tokenizer
            .encode(fx["prompt_text"].as_str().unwrap(), true)
            .unwrap(),
        prompt
    );

    // First-step logits from the cache-free forward pass.
    let t = prompt.len();
    let logits = m
        .model
        .next_token_logits(&prompt, &device)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let fl = &fx["first_step_logits"];
    let mut worst = 0f32;
    for key in ["top", "sampled"] {
        let idx = common::ids(&fl[format!("{key}_ids")]);
        let vals: Vec<f32> = fl[format!("{key}_values")]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (i, v) in idx.iter().zip(vals) {
            worst = worst.max((logits[*i as usize] - v).abs());
        }
    }
    eprintln!("max |logit diff| vs transformers: {worst:.2e}");
    assert!(worst < LOGIT_TOL, "first-step logits differ by {worst}");

    // 64 greedy tokens through the KV-cache path (no EOS stop, as recorded).
    let mut gen = BatchGenerator::new(
        &m.model,
        &m.tokenizer,
        std::slice::from_ref(&prompt),
        t + 80,
        vec![],
        vec![],
    )
    .unwrap();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    });
    gen.generate(&mut sampler, &[64]);
    let got = gen.rows()[0].tokens[t..].to_vec();
    let want = common::ids(&fx["greedy_ids"]);
    assert_eq!(
        got,
        want,
        "greedy ids differ from transformers\n got: {}\nwant: {}",
        text_of(&m.tokenizer, &got),
        text_of(&m.tokenizer, &want)
    );
}

/// Logits of every position via the cache-free path: `[T, vocab]` flattened.
fn full_logits(model: &Llama<Inference>, ids: &[u32]) -> Vec<f32> {
    let t = ids.len();
    let tokens = Tensor::<Inference, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, t]),
        &backend::device(),
    );
    model
        .logits(model.forward(tokens))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn kv_cache_paths_match_full_forward() {
    let device = backend::device();
    <Inference as burn::tensor::backend::Backend>::seed(&device, 11);
    let cfg = LlamaConfig::tiny(300);
    let model = Llama::<Inference>::random(&cfg, &device);
    let vocab = 300;
    let seq_a: Vec<u32> = (0..20).map(|i| (i * 37 % 300) as u32).collect();
    let seq_b: Vec<u32> = (0..20).map(|i| (i * 11 % 300 + 1) as u32).collect();
    let full_a = full_logits(&model, &seq_a);
    let full_b = full_logits(&model, &seq_b);

    // Row 0 prefilled with 7 tokens, row 1 with 12, then stepped together with different
    // positions; row 1 then gets a 3-token insertion while row 0 idles.
    let mut cache = KvCache::new(
        cfg.num_hidden_layers,
        2,
        cfg.num_key_value_heads,
        cfg.head_dim(),
        32,
        &device,
    );
    let la = model
        .prefill_row(0, &seq_a[..7], &mut cache)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(max_diff(&la, &full_a[6 * vocab..7 * vocab]) < 1e-4);
    let lb = model
        .prefill_row(1, &seq_b[..12], &mut cache)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(max_diff(&lb, &full_b[11 * vocab..12 * vocab]) < 1e-4);
    for s in 0..3 {
        let step = model
            .decode_step(&[seq_a[7 + s], seq_b[12 + s]], &[true, true], &mut cache)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let pa = 7 + s;
        let pb = 12 + s;
        assert!(
            max_diff(&step[..vocab], &full_a[pa * vocab..(pa + 1) * vocab]) < 1e-4,
            "row 0 step {s}"
        );
        assert!(
            max_diff(&step[vocab..], &full_b[pb * vocab..(pb + 1) * vocab]) < 1e-4,
            "row 1 step {s}"
        );
    }
    let lb = model
        .prefill_row(1, &seq_b[15..18], &mut cache)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(max_diff(&lb, &full_b[17 * vocab..18 * vocab]) < 1e-4);
    // Row 0 inactive: a dummy token must not disturb it.
    let step = model
        .decode_step(&[0, seq_b[18]], &[false, true], &mut cache)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(max_diff(&step[vocab..], &full_b[18 * vocab..19 * vocab]) < 1e-4);
    let step = model
        .decode_step(&[seq_a[10], seq_b[19]], &[true, true], &mut cache)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(max_diff(&step[..vocab], &full_a[10 * vocab..11 * vocab]) < 1e-4);
    assert!(max_diff(&step[vocab..], &full_b[19 * vocab..20 * vocab]) < 1e-4);

    // Forking row 1 into row 0 copies its history.
    cache.fork_row(1, &[0]);
    assert_eq!(cache.len(0), 20);
}

#[test]
fn kv_cache_grows_past_its_first_allocation() {
    let device = backend::device();
    <Inference as burn::tensor::backend::Backend>::seed(&device, 5);
    let cfg = LlamaConfig::tiny(200);
    let model = Llama::<Inference>::random(&cfg, &device);
    let seq: Vec<u32> = (0..150).map(|i| (i * 7 % 200) as u32).collect();
    let full = full_logits(&model, &seq);
    let vocab = 200;
    let mut cache = KvCache::new(
        cfg.num_hidden_layers,
        1,
        cfg.num_key_value_heads,
        cfg.head_dim(),
        400,
        &device,
    );
    model.prefill_row(0, &seq[..120], &mut cache);
    for p in 120..150 {
        // Decode crosses the first 128-token allocation at p = 128.
        let step = model
            .decode_step(&[seq[p]], &[true], &mut cache)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            max_diff(&step, &full[p * vocab..(p + 1) * vocab]) < 1e-4,
            "position {p}"
        );
    }
    assert_eq!(cache.len(0), 150);
}
