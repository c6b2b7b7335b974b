//! LoRA adapters as Hugging Face PEFT writes and reads them: a directory holding
//! `adapter_config.json` and `adapter_model.safetensors`.
//!
//! The format is PEFT's `save_pretrained` for a `LoraConfig` on a `*ForCausalLM` (peft
//! `utils/save_and_load.py`, `tuners/lora/config.py`): tensors named
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_A.weight` (`[r, in]`) and
//! `….lora_B.weight` (`[out, r]`), the update scaled by `lora_alpha / r`. vLLM's
//! `--enable-lora` and llama.cpp's `convert_lora_to_gguf.py` read the same directory. sleuth
//! keeps `A` `[in, r]` and `B` `[r, out]` ([`crate::lora`]), so both directions transpose.
//!
//! What sleuth does not run is refused with the key named, never approximated: rsLoRA
//! (`use_rslora`), DoRA (`use_dora`), per-module ranks or alphas (`rank_pattern`,
//! `alpha_pattern`), trained biases (`bias` other than `"none"`), `fan_in_fan_out`, extra
//! trained modules (`modules_to_save`) and targets other than the seven linear layers.

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::export::{write_dir, write_json, write_safetensors, ExportDtype, ExportReport};
use super::{HfError, SafetensorsWeights};
use crate::llama::Llama;
use crate::load::{to_host, transpose};
use crate::lora::{Lora, LoraConfig, LoraTarget};

/// PEFT's adapter configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Whether `dir` looks like a PEFT adapter directory (holds `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// PEFT's name prefix of the linear layer `target` of decoder layer `layer`.
fn module_name(layer: usize, target: LoraTarget) -> String {
    let block = match target {
        LoraTarget::QProj | LoraTarget::KProj | LoraTarget::VProj | LoraTarget::OProj => {
            "self_attn"
        }
        LoraTarget::GateProj | LoraTarget::UpProj | LoraTarget::DownProj => "mlp",
    };
    format!(
        "base_model.model.model.layers.{layer}.{block}.{}",
        target.name()
    )
}

/// The adapters of `model` under PEFT's names and layout (`lora_A` `[r, in]`, `lora_B`
/// `[out, r]`), row-major f32, layer by layer. Empty when the model has none.
pub fn adapter_tensors<B: Backend>(model: &Llama<B>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for layer in 0..model.layers.len() {
        for t in LoraTarget::ALL {
            let Some(l) = &model.target(layer, t).lora else {
                continue;
            };
            let name = module_name(layer, t);
            let [d_in, r] = l.a.val().dims();
            let [_, d_out] = l.b.val().dims();
            out.push((
                format!("{name}.lora_A.weight"),
                vec![r, d_in],
                transpose(&to_host(l.a.val()), d_in, r),
            ));
            out.push((
                format!("{name}.lora_B.weight"),
                vec![d_out, r],
                transpose(&to_host(l.b.val()), r, d_out),
            ));
        }
    }
    out
}

/// `adapter_config.json` for `cfg` (the keys PEFT 0.x writes for a plain LoRA), naming
/// `base_model` as `base_model_name_or_path`.
pub fn adapter_config_json(cfg: &LoraConfig, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": 0.0,
        "target_modules": cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// Writes `model`'s adapters as a PEFT adapter directory at `out` (which must not exist;
/// written to a hidden folder and renamed when complete).
///
/// # Errors
/// [`HfError::Config`] when the model has no adapters; [`HfError::Io`] naming the path.
pub fn write_adapter<B: Backend>(
    model: &Llama<B>,
    base_model: &str,
    out: &Path,
    dtype: ExportDtype,
) -> Result<ExportReport, HfError> {
    let Some(cfg) = model.lora_config() else {
        return Err(HfError::Config {
            path: out.to_path_buf(),
            message: "the model has no LoRA adapters to write (train with [train] lora, or \
                      export the merged weights without --lora-only)"
                .into(),
        });
    };
    write_adapter_tensors(&cfg, adapter_tensors(model), base_model, out, dtype)
}

/// Writes adapter `tensors` of shape `cfg` (as [`adapter_tensors`] returns them: PEFT names,
/// `[r, in]` / `[out, r]`, f32) as a PEFT adapter directory at `out`, as [`write_adapter`]
/// does; what a LoRA run's checkpoint holds instead of the whole model (its `adapter/`).
///
/// # Errors
/// [`HfError::Io`] naming the path (also when `out` exists).
pub fn write_adapter_tensors(
    cfg: &LoraConfig,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    base_model: &str,
    out: &Path,
    dtype: ExportDtype,
) -> Result<ExportReport, HfError> {
    let (n, parameters) = (tensors.len(), tensors.iter().map(|(_, _, d)| d.len()).sum());
    let ((), files) = write_dir(out, |dir| {
        write_safetensors(&dir.join(ADAPTER_WEIGHTS), tensors, dtype)?;
        write_json(
            &dir.join(ADAPTER_CONFIG),
            &adapter_config_json(cfg, base_model),
        )
    })?;
    Ok(ExportReport {
        dir: out.to_path_buf(),
        files,
        tensors: n,
        parameters,
    })
}

/// Reads the adapter shape from `dir/adapter_config.json`, refusing what sleuth does not run
/// (module docs).
///
/// # Errors
/// [`HfError::Io`] / [`HfError::Config`] naming the file and the key.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, HfError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(super::io(&path))?;
    let bad = |message: String| HfError::Config {
        path: path.clone(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = get("peft_type").and_then(|x| x.as_str()) {
        if t != "LORA" {
            return Err(bad(format!("peft_type {t:?}: only LORA adapters load")));
        }
    }
    for flag in ["use_rslora", "use_dora", "fan_in_fan_out"] {
        if get(flag).and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad(format!("{flag} = true is not supported")));
        }
    }
    for pattern in ["rank_pattern", "alpha_pattern"] {
        if get(pattern)
            .and_then(|x| x.as_object())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(format!(
                "{pattern} is not supported (one rank and alpha for all modules)"
            )));
        }
    }
    if let Some(b) = get("bias").and_then(|x| x.as_str()) {
        if b != "none" {
            return Err(bad(format!(
                "bias = {b:?} is not supported (\"none\" only)"
            )));
        }
    }
    if get("modules_to_save")
        .and_then(|x| x.as_array())
        .is_some_and(|a| !a.is_empty())
    {
        return Err(bad("modules_to_save is not supported".into()));
    }
    let rank = get("r")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| bad("no integer \"r\"".into()))? as usize;
    let alpha = get("lora_alpha")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| bad("no number \"lora_alpha\"".into()))?;
    let names: Vec<String> = match get("target_modules") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("target_modules holds a non-string".into()))?,
        Some(serde_json::Value::String(s)) if s == "all-linear" => LoraTarget::ALL
            .iter()
            .map(|t| t.name().to_string())
            .collect(),
        Some(other) => {
            return Err(bad(format!(
                "target_modules {other}: a list of module names (or \"all-linear\") loads"
            )))
        }
        None => return Err(bad("no \"target_modules\"".into())),
    };
    let mut targets = Vec::new();
    for name in names {
        let t = LoraTarget::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                bad(format!(
                    "target module {name:?} is not one of q_proj, k_proj, v_proj, o_proj, \
                     gate_proj, up_proj, down_proj"
                ))
            })?;
        targets.push(t);
    }
    targets.sort();
    let cfg = LoraConfig {
        rank,
        alpha,
        targets,
    };
    cfg.validate().map_err(bad)?;
    Ok(cfg)
}

/// `model` with the PEFT adapter in `dir` attached: every adapter tensor read, shape-checked
/// and placed beside its base weight. Adapters the model already had are folded into its
/// weights first (the new adapter applies on top of what the model computes); in training the
/// adapters stay trainable and the base frozen, as [`Llama::with_lora`] leaves them.
///
/// # Errors
/// [`read_adapter_config`]'s; [`HfError::MissingTensor`] / [`HfError::Shape`] when the weights
/// lack a tensor of a named target or have another shape; [`HfError::Config`] when a layer
/// the file names does not exist in `model`.
pub fn apply_adapter<B: Backend>(model: Llama<B>, dir: &Path) -> Result<Llama<B>, HfError> {
    let cfg = read_adapter_config(dir)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let weights = SafetensorsWeights::open_file(&weights_path)?;
    let layers = model.layers.len();
    if let Some(name) = weights.names().find(|n| {
        n.strip_prefix("base_model.model.model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= layers)
    }) {
        return Err(HfError::Config {
            path: weights_path.clone(),
            message: format!("tensor {name} names a layer the model ({layers} layers) lacks"),
        });
    }
    let device = model.embed_tokens.device();
    // Attach fresh adapters of the file's shape (base frozen), then overwrite them.
    let mut model = model.merge_lora().with_lora(&cfg, 0);
    for layer in 0..layers {
        for &t in &cfg.targets {
            let name = module_name(layer, t);
            let [d_in, d_out] = model.target(layer, t).weight.val().dims();
            let read = |suffix: &str, shape: [usize; 2]| -> Result<Vec<f32>, HfError> {
                // PEFT saves without the adapter name; some tools keep `.default`.
                let plain = format!("{name}.{suffix}.weight");
                let named = format!("{name}.{suffix}.default.weight");
                let key = if weights.names().any(|n| n == plain) {
                    plain
                } else if weights.names().any(|n| n == named) {
                    named
                } else {
                    plain
                };
                let (data, found) = weights.tensor_f32(&key)?;
                if found != shape {
                    return Err(HfError::Shape {
                        path: weights_path.clone(),
                        tensor: key,
                        expected: shape.to_vec(),
                        found,
                    });
                }
                Ok(data)
            };
            let a = read("lora_A", [cfg.rank, d_in])?;
            let b = read("lora_B", [d_out, cfg.rank])?;
            let lin = model.target_mut(layer, t);
            let old = lin.lora.take();
            let fresh = |v: Vec<f32>, shape: [usize; 2], was: Option<Param<Tensor<B, 2>>>| {
                let t = Tensor::from_data(TensorData::new(v, shape), &device);
                match was {
                    Some(p) => p.map(|old| t.set_require_grad(old.is_require_grad())),
                    None => Param::from_tensor(t),
                }
            };
            let (old_a, old_b) = match old {
                Some(Lora { a, b, .. }) => (Some(a), Some(b)),
                None => (None, None),
            };
            lin.lora = Some(Lora {
                a: fresh(transpose(&a, cfg.rank, d_in), [d_in, cfg.rank], old_a),
                b: fresh(transpose(&b, d_out, cfg.rank), [cfg.rank, d_out], old_b),
                alpha: cfg.alpha,
            });
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::backend::{self, Inference};
    use crate::config::LlamaConfig;

    fn logits(m: &Llama<Inference>) -> Vec<f32> {
        let device = m.embed_tokens.device();
        let ids: Vec<i64> = (0..9).map(|i| (i * 11 + 3) % 50).collect();
        let tokens = Tensor::<Inference, 2, burn::tensor::Int>::from_data(
            TensorData::new(ids, [1, 9]),
            &device,
        );
        m.logits(m.forward(tokens))
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    /// An adapter written and read back computes what the model that wrote it computes, and
    /// the directory has PEFT's names, shapes and config keys.
    #[test]
    fn adapter_round_trips_through_peft_format() {
        let device = backend::device();
        let base = Llama::<Inference>::random(&LlamaConfig::tiny(50), &device);
        let cfg = LoraConfig {
            rank: 3,
            alpha: 6.0,
            targets: vec![LoraTarget::KProj, LoraTarget::UpProj],
        };
        let mut adapted = base.clone().with_lora(&cfg, 5);
        // Give B values (fresh adapters compute nothing).
        for layer in 0..adapted.layers.len() {
            for t in [LoraTarget::KProj, LoraTarget::UpProj] {
                let l = adapted.target_mut(layer, t).lora.as_mut().unwrap();
                let [r, out] = l.b.val().dims();
                let v: Vec<f32> = (0..r * out)
                    .map(|i| ((i % 7) as f32 - 3.0) * 0.01)
                    .collect();
                l.b = Param::from_tensor(Tensor::from_data(TensorData::new(v, [r, out]), &device));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        let report = write_adapter(&adapted, "models/base", &out, ExportDtype::F32).unwrap();
        assert_eq!(report.tensors, 2 * 2 * 2);
        assert!(is_adapter_dir(&out));
        let names: Vec<&str> = report.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [ADAPTER_CONFIG, ADAPTER_WEIGHTS]);
        let w = SafetensorsWeights::open_file(&out.join(ADAPTER_WEIGHTS)).unwrap();
        let (_, shape) = w
            .tensor_f32("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight")
            .unwrap();
        assert_eq!(shape, vec![3, 64]);
        let (_, shape) = w
            .tensor_f32("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")
            .unwrap();
        assert_eq!(shape, vec![128, 3]);
        assert_eq!(read_adapter_config(&out).unwrap(), cfg);

        let loaded = apply_adapter(base.clone(), &out).unwrap();
        assert_eq!(loaded.lora_config(), Some(cfg));
        assert_eq!(logits(&loaded), logits(&adapted));
        assert_ne!(logits(&loaded), logits(&base));

        // Refusals name the key.
        let cfg_path = out.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).unwrap();
        std::fs::write(
            &cfg_path,
            text.replace("\"use_dora\": false", "\"use_dora\": true"),
        )
        .unwrap();
        let err = apply_adapter(base.clone(), &out).unwrap_err().to_string();
        assert!(err.contains("use_dora"), "{err}");
        std::fs::write(&cfg_path, text.replace("\"k_proj\"", "\"lm_head\"")).unwrap();
        let err = apply_adapter(base.clone(), &out).unwrap_err().to_string();
        assert!(err.contains("lm_head"), "{err}");
        // A model without the layers the file names.
        std::fs::write(&cfg_path, &text).unwrap();
        let one_layer = Llama::<Inference>::random(
            &LlamaConfig {
                num_hidden_layers: 1,
                ..LlamaConfig::tiny(50)
            },
            &device,
        );
        let err = apply_adapter(one_layer, &out).unwrap_err().to_string();
        assert!(
            err.contains("layers.1") && err.contains("1 layers"),
            "{err}"
        );
        // No adapters, nothing to write.
        let err = write_adapter(&base, "b", &dir.path().join("x"), ExportDtype::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no LoRA adapters"), "{err}");
    }
}
