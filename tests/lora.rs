//! LoRA training on the tiny random model: the adapted model starts as its base, SFT moves only
//! the adapters (every base weight keeps its bits), a checkpoint carries the adapter shape and
//! resumes bit-identically, and every loader sees what the run trained (adapters attached from
//! `lora.json`, or folded into the weights for a full fine-tune or the quantized engine).

mod common;

use burn::module::{AutodiffModule, Module};
use burn::tensor::{Int, Tensor, TensorData};
use sleuth::model::backend::{self, Inference, Train};
use sleuth::model::{Llama, LlamaConfig, LoraConfig, LoraTarget};
use sleuth::rl::sft::{SftExample, SftTrainer};
use sleuth::rl::{checkpoint, TrainConfig};

const VOCAB: usize = 97;

fn arch() -> LlamaConfig {
    LlamaConfig::tiny(VOCAB)
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![LoraTarget::QProj, LoraTarget::VProj, LoraTarget::DownProj],
    }
}

fn cfg(lora: Option<LoraConfig>) -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        micro_batch: 2,
        weight_decay: 0.01,
        lora,
        ..Default::default()
    }
}

/// Two short episodes over arbitrary token ids: a 3-token prompt, the rest trained.
fn data() -> Vec<SftExample> {
    (0..2u32)
        .map(|k| {
            let tokens: Vec<u32> = (0..14)
                .map(|i| (i * 7 + k * 13 + 1) % VOCAB as u32)
                .collect();
            let mut mask = vec![1u8; tokens.len()];
            mask[..3].fill(0);
            SftExample {
                question: format!("q{k}"),
                tokens,
                mask,
                prompt_len: 3,
            }
        })
        .collect()
}

fn base_model() -> Llama<Train> {
    common::seeded(7, || Llama::random(&arch(), &backend::device()))
}

/// Every base (non-adapter) weight of `m`, host copies in a fixed order.
fn base_weights<B: burn::tensor::backend::Backend>(m: &Llama<B>) -> Vec<Vec<f32>> {
    let host = |t: Tensor<B, 1>| t.into_data().to_vec::<f32>().unwrap();
    let flat = |t: Tensor<B, 2>| host(t.flatten(0, 1));
    let mut out = vec![flat(m.embed_tokens.val()), host(m.norm.weight.val())];
    for (i, l) in m.layers.iter().enumerate() {
        out.push(host(l.input_layernorm.weight.val()));
        out.push(host(l.post_attention_layernorm.weight.val()));
        for t in LoraTarget::ALL {
            out.push(flat(m.target(i, t).weight.val()));
        }
    }
    out
}

fn logits<B: burn::tensor::backend::Backend>(m: &Llama<B>) -> Vec<f32> {
    let device = m.embed_tokens.device();
    let ids: Vec<i64> = (0..10).map(|i| (i * 5 + 2) % VOCAB as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 10]), &device);
    m.logits(m.forward(tokens))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn trainer(model: Llama<Train>, lora: Option<LoraConfig>) -> SftTrainer<Train> {
    SftTrainer::new(model, arch(), cfg(lora), data(), backend::device()).unwrap()
}

#[test]
fn lora_sft_moves_only_the_adapters_and_resumes_bit_identically() {
    let base = base_model();
    let base_bits = base_weights(&base);
    let base_logits = logits(&base.valid());

    let mut sft = trainer(base.clone(), Some(lora()));
    let m = &sft.learner.model;
    assert_eq!(m.lora_config(), Some(lora()));
    // 2 layers × (q 64×64, v 64×32, down 128×64) at rank 4: 4 · (64+64 + 64+32 + 128+64) each.
    assert_eq!(m.lora_params(), 2 * 4 * (128 + 96 + 192));
    assert!(sft.learner.trained_weights().contains("LoRA r = 4"));
    // B = 0: the adapted model computes exactly its base.
    assert_eq!(logits(&m.valid()), base_logits);

    let first = sft.step().loss;
    let mut losses = vec![first];
    for _ in 0..5 {
        losses.push(sft.step().loss);
    }
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]) && losses[5] < first - 0.1,
        "the adapters should fit the data: {losses:?}"
    );
    let trained = sft.learner.model.clone();
    assert_eq!(
        base_weights(&trained),
        base_bits,
        "a frozen base weight moved"
    );
    let b = trained.target(0, LoraTarget::QProj).lora.as_ref().unwrap();
    assert!(b.b.val().abs().max().into_scalar() > 0.0, "B never moved");
    assert!(trained.target(0, LoraTarget::KProj).lora.is_none());
    assert_ne!(logits(&trained.valid()), base_logits);

    // Checkpoint after 3 steps, resume, 3 more: the same bits as 6 steps straight.
    let dir = tempfile::tempdir().unwrap();
    let mut a = trainer(base.clone(), Some(lora()));
    for _ in 0..3 {
        a.step();
    }
    a.learner.save(dir.path()).unwrap();
    let ck = checkpoint::dir(dir.path());
    assert!(ck.join("lora.json").exists());
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = trainer(base.clone(), None);
    full.step();
    full.learner.save(full_dir.path()).unwrap();
    assert!(!checkpoint::dir(full_dir.path()).join("lora.json").exists());
    let size = |d: &std::path::Path| std::fs::metadata(d.join("optimizer.mpk")).unwrap().len();
    assert!(
        size(&ck) * 10 < size(&checkpoint::dir(full_dir.path())),
        "AdamW should keep moments for the adapters only: {} vs {} bytes",
        size(&ck),
        size(&checkpoint::dir(full_dir.path()))
    );
    let mut b = trainer(base.clone(), Some(lora()));
    b.learner.resume_from(dir.path()).unwrap();
    assert_eq!(b.learner.state.step, 3);
    let resumed: Vec<f64> = (0..3).map(|_| b.step().loss).collect();
    assert_eq!(resumed, losses[3..]);
    assert_eq!(logits(&b.learner.model.valid()), logits(&trained.valid()));

    // Resuming under other LoRA settings is refused with both named.
    let mut other = trainer(base.clone(), Some(LoraConfig { rank: 2, ..lora() }));
    let err = other
        .learner
        .resume_from(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[train] lora") && err.contains("rank 4") && err.contains("rank 2"),
        "{err}"
    );

    // A loader that knows nothing of LoRA gets the adapters from lora.json.
    let (loaded, _) = checkpoint::load_saved::<Inference>(dir.path(), &backend::device()).unwrap();
    assert_eq!(loaded.lora_config(), Some(lora()));
    let at3 = a.learner.model.valid();
    assert_eq!(logits(&loaded), logits(&at3));
    // Folded into the weights (export, quantized engine): the same function up to rounding.
    let merged = loaded.clone().merge_lora();
    assert_eq!(merged.lora_config(), None);
    let d = max_abs_diff(&logits(&merged), &logits(&at3));
    assert!(d < 1e-4, "merged logits differ by {d}");
    // A full fine-tune started from the LoRA run folds the adapters and trains everything.
    let from_lora = checkpoint::load_model(dir.path(), base.clone(), &backend::device()).unwrap();
    let full = trainer(from_lora, None);
    assert_eq!(full.learner.model.lora_config(), None);
    assert!(full.learner.trained_weights().starts_with("all "));
    let d = max_abs_diff(&logits(&full.learner.model.valid()), &logits(&at3));
    assert!(d < 1e-4, "folded logits differ by {d}");
}

#[test]
fn lora_targets_and_seed_decide_the_adapters() {
    let base = base_model();
    let a = base.clone().with_lora(&lora(), 1);
    let b = base.clone().with_lora(&lora(), 1);
    let c = base.clone().with_lora(&lora(), 2);
    let first_a = |m: &Llama<Train>| {
        m.target(1, LoraTarget::DownProj)
            .lora
            .as_ref()
            .unwrap()
            .a
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(first_a(&a), first_a(&b), "one seed, one initialisation");
    assert_ne!(first_a(&a), first_a(&c));
    // PEFT's kaiming-uniform bound for down_proj's fan-in of 128.
    let bound = 1.0 / (128f32).sqrt();
    assert!(first_a(&a).iter().all(|v| v.abs() <= bound));
    // Attaching the same settings again keeps the trained adapters; other settings fold them.
    let again = a.clone().with_lora(&lora(), 9);
    assert_eq!(first_a(&again), first_a(&a));
    let all = a.clone().with_lora(&LoraConfig::default(), 9);
    assert_eq!(all.lora_config(), Some(LoraConfig::default()));
    assert_eq!(all.num_params() - base.num_params(), all.lora_params());
}

/// A LoRA run's checkpoints hold the adapters (a PEFT folder) and name the frozen base, which
/// is written once per process beside them; a damaged base is refused.
#[test]
fn lora_checkpoints_hold_adapters_and_name_their_base_once() {
    let base = base_model();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let bases = || -> Vec<(String, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(run)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("base"))
            .map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                (name, e.metadata().unwrap().modified().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let mut a = trainer(base.clone(), Some(lora()));
    a.step();
    a.learner.save(run).unwrap();
    let ck = checkpoint::dir(run);
    assert!(checkpoint::is_adapter_only(run));
    assert!(
        !ck.join("model.mpk").exists(),
        "the base was written into the checkpoint"
    );
    let adapter = ck.join("adapter").join("adapter_model.safetensors");
    assert!(ck.join("adapter").join("adapter_config.json").is_file());
    let first = bases();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].0.starts_with("base-") && first[0].0.ends_with(".mpk"));
    let base_bytes = std::fs::metadata(run.join(&first[0].0)).unwrap().len();
    let adapter_bytes = std::fs::metadata(&adapter).unwrap().len();
    assert!(
        adapter_bytes * 10 < base_bytes,
        "adapters {adapter_bytes} B against a base of {base_bytes} B"
    );

    // Later checkpoints of the process name the same base and do not rewrite it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    a.step();
    a.learner.save(run).unwrap();
    assert_eq!(bases(), first);
    let at2 = logits(&a.learner.model.valid());

    // A resumed process reads that base and does not write it again; its model is the
    // trained one to the bit.
    let mut b = trainer(base.clone(), Some(lora()));
    b.learner.resume_from(run).unwrap();
    assert_eq!(logits(&b.learner.model.valid()), at2);
    b.step();
    b.learner.save(run).unwrap();
    assert_eq!(bases(), first);

    // A fresh process writing into the run rewrites its base: same bytes, same name, one file.
    let mut c = trainer(base.clone(), Some(lora()));
    c.step();
    c.learner.save(run).unwrap();
    let again = bases();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, first[0].0);

    // A full fine-tune still writes the whole model, and no base.
    let full_dir = tempfile::tempdir().unwrap();
    let mut full = trainer(base.clone(), None);
    full.step();
    full.learner.save(full_dir.path()).unwrap();
    assert!(checkpoint::dir(full_dir.path()).join("model.mpk").is_file());
    assert!(!checkpoint::is_adapter_only(full_dir.path()));

    // A damaged base is refused by name, not trained on or served.
    let base_path = run.join(&first[0].0);
    let mut bytes = std::fs::read(&base_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&base_path, bytes).unwrap();
    let err = checkpoint::load_saved::<Inference>(run, &backend::device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&first[0].0) && err.contains("corrupt"),
        "{err}"
    );
}
