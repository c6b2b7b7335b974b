//! Hugging Face model directories: parity with transformers for each supported architecture,
//! errors for malformed directories, and `export` round trips.
//!
//! The fixtures in `tests/fixtures/hf/{llama,qwen2,qwen3}` are tiny random-weight models with
//! a small byte-level BPE tokenizer, written deterministically by
//! `scripts/reference/record_hf_fixtures.py` (transformers 5.25.0, torch 2.15.0), which also
//! recorded `reference.json`: prompt ids as transformers' tokenizer encodes them, 32 greedy
//! ids, the first step's logits (f32, weights upcast from the stored dtype), and rendered chat
//! templates. They cover f32 / bf16 / f16 storage, a sharded directory (qwen3: 4 shards),
//! tied (qwen2) and untied heads, q/k/v biases (qwen2), per-head q/k norms and an explicit
//! `head_dim` (qwen3), a BOS-adding post-processor (llama) and a config vocabulary larger than
//! the tokenizer's (qwen2).

mod common;

use std::path::{Path, PathBuf};

use sleuth::model::backend::{self, Inference};
use sleuth::model::chat::{ChatMessage, ChatTemplate};
use sleuth::model::hf::export::{export, ExportDtype, ExportOptions};
use sleuth::model::{
    load, text_of, Architecture, BatchGenerator, DecodeWeights, Engine, Llama, ModelError, Sampler,
    SamplingConfig,
};

/// Largest allowed |logit − transformers'| at the first step. Logits here are O(1–10); the
/// two f32 forward passes sum in different orders (measured: below 1e-5).
const LOGIT_TOL: f32 = 1e-4;

fn fixture_dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(family)
}

fn reference(family: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Logits `[vocab]` of the token after `ids` (cache-free forward).
fn first_logits(model: &Llama<Inference>, ids: &[u32]) -> Vec<f32> {
    model
        .next_token_logits(ids, &backend::device())
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `n` greedy ids after `prompt` through the decode engine `weights` names (KV-cache path).
fn greedy(
    model: &Llama<Inference>,
    tok: &sleuth::model::Tokenizer,
    prompt: &[u32],
    n: usize,
    weights: DecodeWeights,
) -> Vec<u32> {
    let engine = Engine::new(model, weights);
    let mut gen = BatchGenerator::new(
        &engine,
        tok,
        std::slice::from_ref(&prompt.to_vec()),
        prompt.len() + n + 8,
        vec![],
        vec![],
    )
    .unwrap();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    });
    gen.generate(&mut sampler, &[n]);
    gen.rows()[0].tokens[prompt.len()..].to_vec()
}

#[test]
fn each_family_matches_transformers() {
    let device = backend::device();
    for (family, arch) in [
        ("llama", Architecture::Llama),
        ("qwen2", Architecture::Qwen2),
        ("qwen3", Architecture::Qwen3),
    ] {
        let fx = reference(family);
        let m = load::<Inference>(&fixture_dir(family), &device).unwrap();
        assert_eq!(m.config.architecture().unwrap(), arch, "{family}");
        assert_eq!(m.config.attention_bias, arch == Architecture::Qwen2);
        assert_eq!(m.config.qk_norm(), arch == Architecture::Qwen3);

        // Tokenization, BOS included exactly when transformers adds it.
        let prompt = common::ids(&fx["prompt_ids"]);
        let text = fx["prompt_text"].as_str().unwrap();
        let encoded = m
            .tokenizer
            .with_bos(m.tokenizer.encode(text, true).unwrap());
        assert_eq!(encoded, prompt, "{family}: prompt ids");
        assert_eq!(
            m.tokenizer.add_bos(),
            family == "llama",
            "{family}: add_bos"
        );

        // First-step logits, over the whole (config) vocabulary.
        let want = floats(&fx["first_logits"]);
        let got = first_logits(&m.model, &prompt);
        let worst = max_diff(&got, &want);
        eprintln!("{family}: max |logit diff| vs transformers {worst:.2e}");
        assert!(
            worst < LOGIT_TOL,
            "{family}: first-step logits differ by {worst}"
        );

        // 32 greedy ids through the f32 KV-cache path.
        let want_ids = common::ids(&fx["greedy_ids"]);
        let got_ids = greedy(
            &m.model,
            &m.tokenizer,
            &prompt,
            want_ids.len(),
            DecodeWeights::F32,
        );
        assert_eq!(got_ids, want_ids, "{family}: greedy ids");

        // The quantized decode engine runs every family (biases, q/k norms, head_dim) and
        // stays close to f32: its first greedy token is transformers' wherever the margin is
        // clear, and its first-step logits are near.
        let q = greedy(&m.model, &m.tokenizer, &prompt, 1, DecodeWeights::Q8_0);
        let margin = fx["greedy_margins"][0].as_f64().unwrap();
        if margin > 0.1 {
            assert_eq!(q[0], want_ids[0], "{family}: q8_0 first token");
        }

        // The chat template, rendered as transformers renders it.
        let template = ChatTemplate::from_tokenizer(&m.tokenizer).unwrap().unwrap();
        let messages = |key: &str| -> Vec<ChatMessage> {
            fx[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect()
        };
        assert_eq!(
            template.render(&messages("chat_messages"), true).unwrap(),
            fx["chat_rendered"].as_str().unwrap(),
            "{family}: chat template"
        );
        if let Some(rendered) = fx["chat_rendered_reasoning"].as_str() {
            assert_eq!(
                template
                    .render(&messages("chat_messages_reasoning"), true)
                    .unwrap(),
                rendered,
                "{family}: chat template, reasoning turns"
            );
        }
        if let Some(rendered) = fx["chat_rendered_no_system"].as_str() {
            assert_eq!(
                template
                    .render(&messages("chat_messages_no_system"), true)
                    .unwrap(),
                rendered,
                "{family}: chat template without a system turn"
            );
        }
        if let Some(msg) = fx["chat_error"].as_str() {
            let err = template
                .render(&messages("chat_messages_bad_role"), true)
                .unwrap_err();
            assert!(err.to_string().contains(msg), "{family}: {err}");
        }
    }
}

/// A copy of fixture `family` in a temporary directory, to damage.
fn copy_fixture(family: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(family)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    match load::<Inference>(dir, &backend::device()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn malformed_directories_name_file_and_tensor() {
    // Unknown architecture.
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| {
        v["architectures"] = serde_json::json!(["MistralForCausalLM"])
    });
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("MistralForCausalLM"),
        "{e}"
    );

    // A config that is not JSON, and one with a wrong type.
    let d = copy_fixture("llama");
    std::fs::write(d.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json"), "{e}");
    let d = copy_fixture("llama");
    edit_config(d.path(), |v| v["num_hidden_layers"] = "two".into());
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("num_hidden_layers") || e.contains("invalid type"),
        "{e}"
    );

    // Scaled RoPE is refused, not run with the wrong positions.
    let d = copy_fixture("llama");
    edit_config(
        d.path(),
        |v| {
            v["rope_parameters"] =
                serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0})
        },
    );
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("llama3"), "{e}");

    // A shape that disagrees with config.json: names the shard and the tensor.
    let d = copy_fixture("qwen3");
    edit_config(d.path(), |v| v["intermediate_size"] = 96.into());
    let e = load_err(d.path());
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains(".safetensors"),
        "{e}"
    );
    assert!(e.contains("[96, 64]") && e.contains("[128, 64]"), "{e}");

    // A truncated shard.
    let d = copy_fixture("qwen3");
    let shard = d.path().join("model-00002-of-00004.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model-00002-of-00004.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // A missing tensor: drop one from the single-file weights.
    let d = copy_fixture("llama");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.self_attn.v_proj.weight")
        .collect();
    let out = safetensors::tensor::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.1.self_attn.v_proj.weight") && e.contains("not found"),
        "{e}"
    );

    // Qwen2 needs its q/k/v biases.
    let d = copy_fixture("qwen2");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.0.self_attn.k_proj.bias")
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(kept, None).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.layers.0.self_attn.k_proj.bias"), "{e}");

    // No weights at all; a directory without config.json.
    let d = copy_fixture("llama");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = load_err(empty.path());
    assert!(e.contains("config.json"), "{e}");
    assert!(matches!(
        load::<Inference>(empty.path(), &backend::device()),
        Err(ModelError::UnsupportedFormat { .. })
    ));
}

#[test]
fn export_round_trips_each_family_and_dtype() {
    let device = backend::device();
    for family in ["llama", "qwen2", "qwen3"] {
        let fx = reference(family);
        let prompt = common::ids(&fx["prompt_ids"]);
        let src = load::<Inference>(&fixture_dir(family), &device).unwrap();
        let want = first_logits(&src.model, &prompt);
        let tmp = tempfile::tempdir().unwrap();
        for (dtype, shard, tol) in [
            (ExportDtype::F32, u64::MAX, 0.0),
            (ExportDtype::F32, 40_000, 0.0),
            (ExportDtype::Bf16, u64::MAX, 0.5),
        ] {
            let out = tmp.path().join(format!("{family}-{dtype}-{shard}"));
            let opts = ExportOptions {
                dtype,
                max_shard_bytes: shard,
            };
            let report = export(
                &src.model,
                &src.config,
                &src.tokenizer,
                Some(&fixture_dir(family)),
                &out,
                &opts,
            )
            .unwrap();
            let names: Vec<&str> = report.files.iter().map(|(n, _)| n.as_str()).collect();
            assert!(names.contains(&"config.json") && names.contains(&"tokenizer.json"));
            assert_eq!(
                names.contains(&"model.safetensors.index.json"),
                shard != u64::MAX,
                "{names:?}"
            );
            // Nothing left beside the output.
            let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");

            let back = load::<Inference>(&out, &device).unwrap();
            assert_eq!(
                back.config.architecture().unwrap(),
                src.config.architecture().unwrap()
            );
            assert_eq!(back.config.head_dim(), src.config.head_dim());
            let got = first_logits(&back.model, &prompt);
            let worst = max_diff(&got, &want);
            assert!(
                worst <= tol,
                "{family} {dtype}: reloaded logits differ by {worst}"
            );
            // Exporting onto an existing directory is refused.
            assert!(export(&src.model, &src.config, &src.tokenizer, None, &out, &opts).is_err());
        }
    }
}

#[test]
fn gguf_born_policy_exports_to_a_directory_with_the_same_greedy_ids() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!("skipping: {} missing (run scripts/setup)", gguf.display());
        return;
    }
    let device = backend::device();
    let src = load::<Inference>(&gguf, &device).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    export(
        &src.model,
        &src.config,
        &src.tokenizer,
        None,
        &out,
        &ExportOptions::default(),
    )
    .unwrap();
    let back = load::<Inference>(&out, &device).unwrap();
    // The tokenizer written from GGUF metadata encodes like the GGUF's.
    let text = "<|im_start|>user\nWhich river flows through Paris in 1998?<|im_end|>\n<|im_start|>assistant\n";
    let ids = src.tokenizer.encode(text, true).unwrap();
    assert_eq!(back.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(back.tokenizer.eos_id(), src.tokenizer.eos_id());
    assert_eq!(
        back.tokenizer.chat_template(),
        src.tokenizer.chat_template()
    );
    let a = greedy(&src.model, &src.tokenizer, &ids, 16, DecodeWeights::F32);
    let b = greedy(&back.model, &back.tokenizer, &ids, 16, DecodeWeights::F32);
    assert_eq!(
        a,
        b,
        "{:?} vs {:?}",
        text_of(&src.tokenizer, &a),
        text_of(&back.tokenizer, &b)
    );
}

#[test]
fn cli_export_then_generate_json_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qwen3-bf16");
    let report = common::ok(common::sleuth().args([
        "export",
        fixture_dir("qwen3").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
        "--max-shard-bytes",
        "100000",
    ]));
    let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["architecture"], "Qwen3ForCausalLM");
    assert!(
        report["files"]["model.safetensors.index.json"].is_u64(),
        "{report}"
    );
    let fx = reference("qwen3");
    let line = common::ok(common::sleuth().args([
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--weights",
        "f32",
        "--prompt",
        fx["prompt_text"].as_str().unwrap(),
        "--max-new-tokens",
        "32",
        "--json",
        "--logits",
    ]));
    let got: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(got["prompt_ids"], fx["prompt_ids"]);
    let ids = common::ids(&got["ids"]);
    let want = common::ids(&fx["greedy_ids"]);
    assert!(
        !ids.is_empty() && want.starts_with(&ids),
        "{ids:?} vs {want:?}"
    );
    let worst = max_diff(&floats(&got["first_logits"]), &floats(&fx["first_logits"]));
    assert!(worst < LOGIT_TOL, "{worst}");
}

#[test]
fn rl_steps_train_from_an_hf_directory_and_export_back() {
    let tmp = tempfile::tempdir().unwrap();
    let index = common::bm25_index(tmp.path(), &common::cats_and_rockets());
    let qa = tmp.path().join("qa.jsonl");
    std::fs::write(
        &qa,
        "{\"question\": \"What do cats chase?\", \"answer\": \"mice\"}\n{\"question\": \"What lifts a rocket?\", \"answer\": \"thrust\"}\n",
    )
    .unwrap();
    let config = tmp.path().join("hf.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {model:?}\n[search]\nindex = {index:?}\n\
             [rollout]\nsamples_per_question = 2\nmax_new_tokens = 24\nweights = \"f32\"\n\
             [reward]\nkind = \"stage1\"\n[data]\ntrain = {qa:?}\n\
             [train]\nquestions_per_step = 2\nmicro_batch = 2\nlearning_rate = 1e-3\ncheckpoint_every = 1\n",
            model = fixture_dir("qwen2"),
        ),
    )
    .unwrap();
    let run = tmp.path().join("run");
    common::ok(
        common::sleuth()
            .args(["train", "--config"])
            .arg(&config)
            .args(["--steps", "2", "--out"])
            .arg(&run),
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");

    // Export the run; the directory loads and holds the checkpoint's weights exactly. (A
    // random tiny model's rewards are flat, so its groups carry no advantage and the update
    // is skipped; that gradients flow through each architecture's own parts is
    // `model::fused::tests::fused_model_matches_composed_ops_forward_and_gradients`.)
    let out = tmp.path().join("export");
    common::ok(
        common::sleuth()
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&out),
    );
    let device = backend::device();
    let fx = reference("qwen2");
    let prompt = common::ids(&fx["prompt_ids"]);
    let exported = load::<Inference>(&out, &device).unwrap();
    let (trained, _) = sleuth::rl::checkpoint::load_saved::<Inference>(&run, &device).unwrap();
    let got = first_logits(&exported.model, &prompt);
    assert_eq!(max_diff(&got, &first_logits(&trained, &prompt)), 0.0);
    assert_eq!(exported.config.architecture().unwrap(), Architecture::Qwen2);
    assert!(out.join("tokenizer_config.json").is_file());
}

#[test]
fn sft_run_from_an_hf_directory_exports_without_naming_the_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    // Eight short sequences over the fixture's vocabulary: 12 prompt ids, 21 trained ids.
    let data = tmp.path().join("sft.jsonl");
    let lines: Vec<String> = (0..8u32)
        .map(|i| {
            let tokens: Vec<u32> = (0..33u32).map(|j| (i * 37 + j * 11) % 395).collect();
            let mask: Vec<u8> = (0..33).map(|j| u8::from(j >= 12)).collect();
            serde_json::json!({"question": format!("q{i}"), "tokens": tokens, "mask": mask, "prompt_len": 12})
                .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let config = tmp.path().join("sft.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {model:?}\n[train]\nquestions_per_step = 4\nmicro_batch = 4\ncheckpoint_every = 1\n",
            model = fixture_dir("qwen3"),
        ),
    )
    .unwrap();
    let run = tmp.path().join("sft");
    common::ok(
        common::sleuth()
            .args(["sft", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .args(["--steps", "2", "--lr", "1e-2", "--out"])
            .arg(&run),
    );
    // No --model: the run's config.toml names the base directory (tokenizer, config).
    let out = tmp.path().join("export");
    common::ok(
        common::sleuth()
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&out),
    );
    let device = backend::device();
    let prompt = common::ids(&reference("qwen3")["prompt_ids"]);
    let exported = load::<Inference>(&out, &device).unwrap();
    let base = load::<Inference>(&fixture_dir("qwen3"), &device).unwrap();
    let got = first_logits(&exported.model, &prompt);
    assert!(
        max_diff(&got, &first_logits(&base.model, &prompt)) > 1e-3,
        "two SFT steps at lr 1e-2 left the weights unchanged"
    );
    let (trained, _) = sleuth::rl::checkpoint::load_saved::<Inference>(&run, &device).unwrap();
    assert_eq!(max_diff(&got, &first_logits(&trained, &prompt)), 0.0);
    assert_eq!(exported.config.architecture().unwrap(), Architecture::Qwen3);
}

/// A PEFT adapter made by `peft` itself (`tests/fixtures/hf/llama-lora`, written by
/// `scripts/reference/check_peft.py`: rank 4, alpha 8, all seven projections, A and B random)
/// applied by sleuth on the tiny Llama gives the logits PeftModel computed; and sleuth writing
/// that adapter back out produces peft's tensors under peft's names, value for value, with a
/// config peft's fields agree with.
#[test]
fn a_peft_made_adapter_gives_peft_logits_and_writes_back_as_peft_wrote_it() {
    use sleuth::model::hf::peft;
    let dir = fixture_dir("llama-lora");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let prompt: Vec<u32> = common::ids(&fx["prompt_ids"]);
    let base = load::<Inference>(&fixture_dir("llama"), &backend::device())
        .unwrap()
        .model;
    let base_logits = first_logits(&base, &prompt);
    let adapted = peft::apply_adapter(base, &dir).unwrap();
    let got = first_logits(&adapted, &prompt);
    let want = floats(&fx["first_logits"]);
    let d = max_diff(&got, &want);
    assert!(d <= LOGIT_TOL, "max |logit − peft's| = {d}");
    // The adapter matters: it moves the logits far more than the tolerance.
    assert!(max_diff(&base_logits, &want) > 1.0);

    let out = tempfile::tempdir().unwrap();
    let written = out.path().join("adapter");
    peft::write_adapter(
        &adapted,
        "tests/fixtures/hf/llama",
        &written,
        ExportDtype::F32,
    )
    .unwrap();
    let read = |p: &Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    let (ours, theirs) = (read(&written), read(&dir));
    let (ours, theirs) = (
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut names: Vec<String> = theirs.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut our_names: Vec<String> = ours.names().into_iter().map(str::to_string).collect();
    our_names.sort();
    assert_eq!(our_names, names);
    assert_eq!(
        names.len(),
        2 * 7 * 2,
        "A and B of 7 projections in 2 layers"
    );
    for n in &names {
        let (a, b) = (ours.tensor(n).unwrap(), theirs.tensor(n).unwrap());
        assert_eq!(a.shape(), b.shape(), "{n}");
        assert_eq!(a.data(), b.data(), "{n}: values differ");
    }
    let cfg = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    let (ours, theirs) = (cfg(&written), cfg(&dir));
    for key in ["peft_type", "bias", "use_rslora", "use_dora", "task_type"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    // Numbers as numbers (sleuth writes alpha as a float, peft as the int it was given).
    for key in ["r", "lora_alpha"] {
        assert_eq!(ours[key].as_f64(), theirs[key].as_f64(), "{key}");
    }
    let sorted = |v: &serde_json::Value| {
        let mut t: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        sorted(&ours["target_modules"]),
        sorted(&theirs["target_modules"])
    );
}

/// `--lora DIR` on a config-driven command (`sleuth rollout` here; train, sft, collect, eval and
/// serve share the flag) applies a PEFT adapter on top of the config's model, exactly as
/// `[model] lora = "DIR"` does, and changes what the policy writes.
#[test]
fn lora_flag_on_config_commands_applies_the_adapter_as_the_config_key_does() {
    let dir = tempfile::tempdir().unwrap();
    let index = common::bm25_index(dir.path(), &common::cats_and_rockets());
    let config = |lora: Option<&Path>| {
        let path = dir
            .path()
            .join(format!("cfg-{}.toml", lora.is_some() as u8));
        let mut text = format!(
            "[model]\npath = {:?}\n",
            fixture_dir("llama").display().to_string()
        );
        if let Some(l) = lora {
            text += &format!("lora = {:?}\n", l.display().to_string());
        }
        text += &format!(
            "[search]\nbackend = \"bm25\"\nindex = {:?}\n[prompt]\ntemplate = \"{{question}}\"\n\
             [rollout]\nsamples_per_question = 1\nmax_new_tokens = 12\ncontext_tokens = 128\n\
             temperature = 0.0\nweights = \"f32\"\n",
            index.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let tokens = |cfg: &Path, flag: Option<&Path>| -> Vec<u64> {
        let mut cmd = common::sleuth();
        cmd.args([
            "rollout",
            "--question",
            "Where do cats sleep?",
            "--json",
            "--config",
        ])
        .arg(cfg);
        if let Some(l) = flag {
            cmd.arg("--lora").arg(l);
        }
        let out = common::ok(&mut cmd);
        let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        line["episode"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    };
    let adapter = fixture_dir("llama-lora");
    let plain = tokens(&config(None), None);
    let flagged = tokens(&config(None), Some(&adapter));
    let keyed = tokens(&config(Some(&adapter)), None);
    assert_ne!(
        plain, flagged,
        "the adapter changes the greedy continuation"
    );
    assert_eq!(flagged, keyed);
}
