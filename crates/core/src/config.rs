//! Env/run configuration files (`envs/*.toml`): one struct per section, each owned by the
//! module it configures, assembled here.
//!
//! Every section uses `#[serde(default, deny_unknown_fields)]`: a missing key takes the
//! default stated once in that section's `impl Default`, a misspelt key is an error naming
//! it. Relative paths are taken relative to the working directory (run sleuth from the
//! repository root, as the README does); `prompt.demonstrations_file` is relative to the
//! config file.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::{PromptConfig, RolloutConfig};
use crate::reward::RewardKind;
use crate::rl::TrainConfig;

/// `[model]`: which policy to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// The policy: a GGUF file or a Hugging Face model directory (`config.json`,
    /// `tokenizer.json`, safetensors; Llama, Qwen2/2.5, Qwen3). Default
    /// `models/SmolLM2-135M-Instruct.Q4_1.gguf` (what `scripts/setup` installs). With `backend = "openai"` only its tokenizer is read (the
    /// served model's vocabulary must be the same).
    pub path: PathBuf,
    /// A PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`)
    /// applied on top of `path`, as vLLM's and llama.cpp's `--lora` do
    /// ([`crate::model::hf::peft`]). With `[train] lora` of the same rank and alpha, training
    /// continues that adapter. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<PathBuf>,
    /// Where episodes are sampled: `local` (this process, default) or `openai` (an
    /// OpenAI-compatible completions server, `[model.openai]`; `eval` and `collect` only).
    pub backend: PolicyBackend,
    /// The server of `backend = "openai"` ([`crate::env::remote`]).
    pub openai: crate::env::remote::RemoteOptions,
}

/// `[model] backend`: where episodes are sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyBackend {
    /// The policy runs in this process (burn or the quantized engine).
    #[default]
    Local,
    /// An OpenAI-compatible completions server (vLLM, SGLang, llama.cpp).
    Openai,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            lora: None,
            backend: PolicyBackend::Local,
            openai: crate::env::remote::RemoteOptions::default(),
        }
    }
}

/// `[search]` is the search layer's own section: its schema, defaults and the factory that
/// opens the retriever it names live in [`crate::search::config`]; this file only places it.
pub use crate::search::config::{SearchBackend, SearchSection};

/// `[reward]`: the reward rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSection {
    /// `stage1` or `stage2` (DESIGN §4). Default `stage1`.
    pub kind: RewardKind,
    /// How stage 1 grades the answer: `cover_em` (±1) or `f1` (`2·F1 − 1`); stage 2 always
    /// pays F1 ([`crate::reward::AnswerTerm`]). Default `cover_em`.
    pub answer: crate::reward::AnswerTerm,
    /// `[reward.step]`: the optional step-level retrieval reward added to `kind`'s, paid only
    /// to episodes that finish in format; defaults (off) in
    /// [`crate::reward::StepRewardConfig`].
    pub step: crate::reward::StepRewardConfig,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self {
            kind: RewardKind::Stage1,
            answer: crate::reward::AnswerTerm::CoverEm,
            step: crate::reward::StepRewardConfig::default(),
        }
    }
}

impl RewardSection {
    /// The rule this section names, with its answer term.
    pub fn build(&self) -> Box<dyn crate::reward::RewardFn> {
        self.kind.build_with(self.answer)
    }

    /// The rule and the step-level reward this section names, as a trainer takes them.
    pub fn rewards(&self) -> crate::reward::Rewards {
        crate::reward::Rewards {
            rule: self.build(),
            step: self.step.clone(),
        }
    }
}

/// `[data]`: question sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Training questions: one JSONL file (`question`, `answer`, optionally `support_titles`
    /// and `type`) or a list of them, read in order and concatenated. Default
    /// `../shared/data/qa/stage_1.jsonl`.
    #[serde(deserialize_with = "one_or_many_paths")]
    pub train: Vec<PathBuf>,
    /// Default evaluation set. Default `../shared/data/qa/hotpotqa_500.jsonl`.
    pub eval: PathBuf,
    /// `[data.split]`: disjoint parts of the training questions by a seeded hash of each
    /// question's text ([`crate::qa::QaSplit`]). Default: no parts.
    pub split: crate::qa::QaSplit,
    /// Train only on the questions of this part of `split` (set per phase, e.g.
    /// `data = { part = "coldstart" }`). Default: all of `train`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: vec![PathBuf::from("../shared/data/qa/stage_1.jsonl")],
            eval: PathBuf::from("../shared/data/qa/hotpotqa_500.jsonl"),
            split: crate::qa::QaSplit::default(),
            part: None,
        }
    }
}

impl DataSection {
    /// Reads every `train` file in order and concatenates their questions; with `part` set,
    /// keeps only the questions of that part of `split`.
    ///
    /// # Errors
    /// The first [`crate::qa::QaError`], naming the file and line at fault;
    /// [`crate::qa::QaError::Split`] when `part` names no part of `split` or the shares
    /// are invalid.
    pub fn read_train(&self) -> Result<Vec<crate::qa::QaExample>, crate::qa::QaError> {
        self.check_split()
            .map_err(|reason| crate::qa::QaError::Split { reason })?;
        let mut out = Vec::new();
        for path in &self.train {
            out.extend(crate::qa::read_qa(path)?);
        }
        if let Some(part) = &self.part {
            out.retain(|q| self.split.part_of(&q.question) == Some(part.as_str()));
        }
        Ok(out)
    }

    /// Checks `split`'s shares and that `part`, when set, names one of its parts.
    ///
    /// # Errors
    /// A sentence naming the key at fault.
    pub fn check_split(&self) -> Result<(), String> {
        self.split.validate()?;
        match &self.part {
            Some(part) if !self.split.parts.contains_key(part) => Err(format!(
                "[data] part = {part:?} is not a part of [data.split] (parts: {:?})",
                self.split.parts.keys().collect::<Vec<_>>()
            )),
            _ => Ok(()),
        }
    }
}

/// Accepts `train = "a.jsonl"` as well as `train = ["a.jsonl", "b.jsonl"]`.
fn one_or_many_paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// What a phase does (see [`crate::curriculum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    /// Write cold-start episodes.
    Collect,
    /// Supervised fine-tuning on the latest collected episodes.
    Sft,
    /// Reinforcement learning steps.
    Rl,
    /// Evaluate the current policy.
    Eval,
}

/// One `[[phase]]` of a config. Only `name` and `kind` are required; the override tables
/// hold any keys of the base config's section of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSection {
    /// Unique name, e.g. `stage1`; labels metrics lines and the phase's folder.
    pub name: String,
    /// What the phase does.
    pub kind: PhaseKind,
    /// `sft` / `rl`: optimizer steps. `sleuth train --phase-steps N` caps it. Default 0.
    #[serde(default)]
    pub steps: usize,
    /// `collect`: write scripted episodes (`true`, the default) or rejection-sample from the
    /// current policy (`false`).
    #[serde(default = "yes")]
    pub scripted: bool,
    /// `collect`: keep only episodes with at least this many searches (scripted or sampled).
    /// Default 1.
    #[serde(default = "one")]
    pub min_searches: usize,
    /// `collect` (rejection sampling) / `eval`: questions per batched rollout. Default 4.
    #[serde(default = "four")]
    pub batch: usize,
    /// `collect` / `eval`: use only the first N questions of each set. Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// `eval`: the held-out QA files (never the training questions). Default: `[data] eval`.
    #[serde(default)]
    pub sets: Vec<PathBuf>,
    /// Overrides of `[train]` for this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<toml::Table>,
    /// Overrides of `[rollout]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<toml::Table>,
    /// Overrides of `[reward]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<toml::Table>,
    /// Overrides of `[prompt]` (inline keys only: `demonstrations_file` is read once, from the
    /// base config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<toml::Table>,
    /// Overrides of `[data]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<toml::Table>,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}

/// A phase whose settings do not make a valid config.
#[derive(Debug, thiserror::Error)]
#[error("[[phase]] {name:?}: {reason}")]
pub struct PhaseError {
    /// Phase name.
    pub name: String,
    /// What is wrong (names the key).
    pub reason: String,
}

impl RunConfig {
    /// The config phase `p` runs with: this config with `p`'s `train`, `rollout`, `prompt` and
    /// `data` tables merged in key by key (nested tables merge, other values replace), and its
    /// `reward` table, when given, **replacing** `[reward]` whole: a phase that states a reward
    /// states all of it, so stage 2 (`reward = { kind = "stage2" }`) never inherits stage 1's
    /// `[reward.step]` weights by accident (docs/learning.md round 4: they paid up to half the
    /// maximum F1 reward in the stage meant to teach answering).
    ///
    /// Each phase also gets its own seed, `phase_seed([train] seed, name)`, unless its `train`
    /// table sets `seed`: phases draw their data in distinct orders (otherwise stage 1 and
    /// stage 2 replay the same question order) and sample with distinct streams.
    ///
    /// # Errors
    /// `PhaseError::Phase` naming the phase and the bad key.
    pub fn phase_config(&self, p: &PhaseSection) -> Result<RunConfig, PhaseError> {
        let err = |reason: String| PhaseError {
            name: p.name.clone(),
            reason,
        };
        let base = RunConfig {
            phase: Vec::new(),
            ..self.clone()
        };
        let mut v = toml::Table::try_from(&base).map_err(|e| err(e.to_string()))?;
        if p.prompt
            .as_ref()
            .is_some_and(|t| t.contains_key("demonstrations_file"))
        {
            return Err(err(
                "prompt.demonstrations_file cannot be set per phase (set it in [prompt])".into(),
            ));
        }
        for (section, table) in [
            ("train", &p.train),
            ("rollout", &p.rollout),
            ("reward", &p.reward),
            ("prompt", &p.prompt),
            ("data", &p.data),
        ] {
            if let Some(t) = table {
                if section == "reward" {
                    v.insert(section.to_string(), toml::Value::Table(t.clone()));
                    continue;
                }
                let slot = v
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(dst) = slot {
                    merge(dst, t);
                }
            }
        }
        let mut out: RunConfig = toml::Value::Table(v)
            .try_into()
            .map_err(|e: toml::de::Error| err(e.to_string()))?;
        if !p.train.as_ref().is_some_and(|t| t.contains_key("seed")) {
            out.train.seed = phase_seed(self.train.seed, &p.name);
        }
        out.data.check_split().map_err(err)?;
        if let Some(lora) = &out.train.lora {
            lora.validate().map_err(err)?;
        }
        Ok(out)
    }

    /// Checks every phase: unique names, overrides that parse.
    ///
    /// # Errors
    /// `PhaseError::Phase` for the first bad phase.
    pub fn check_phases(&self) -> Result<(), PhaseError> {
        let mut seen = std::collections::HashSet::new();
        for p in &self.phase {
            if !seen.insert(p.name.as_str()) {
                return Err(PhaseError {
                    name: p.name.clone(),
                    reason: "duplicate phase name".into(),
                });
            }
            self.phase_config(p)?;
        }
        Ok(())
    }
}

/// The seed of phase `name` under the config's `[train] seed`: FNV-1a of the name mixed with
/// the seed (SplitMix64's finaliser), so each phase has its own data order and sampling stream
/// and the same config always gives the same seeds.
pub fn phase_seed(seed: u64, name: &str) -> u64 {
    use crate::hash::{fnv1a, splitmix64_mix, GOLDEN_GAMMA};
    splitmix64_mix(seed.wrapping_add(GOLDEN_GAMMA) ^ fnv1a(name.as_bytes()))
}

/// Merges `src` into `dst`: tables recursively, other values replace.
fn merge(dst: &mut toml::Table, src: &toml::Table) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => merge(d, s),
            _ => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A whole env/run configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Policy model.
    pub model: ModelSection,
    /// Retriever.
    pub search: SearchSection,
    /// Prompt template and demonstrations.
    pub prompt: PromptConfig,
    /// Rollout settings.
    pub rollout: RolloutConfig,
    /// Reward rule.
    pub reward: RewardSection,
    /// Question sets.
    pub data: DataSection,
    /// Trainer settings.
    pub train: TrainConfig,
    /// Curriculum phases (`[[phase]]`), run in order by `sleuth train`
    /// ([`crate::curriculum`]); empty for a single-phase config.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase: Vec<PhaseSection>,
}

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Config path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/mistyped keys.
    #[error("{path}: {source}")]
    Toml {
        /// Config path.
        path: PathBuf,
        /// Parser error (names line, column and key).
        source: toml::de::Error,
    },
    /// A referenced file could not be read.
    #[error(transparent)]
    Prompt(#[from] crate::env::prompt::PromptError),
    /// `[data]`'s split or part is invalid.
    #[error("{path}: {reason}")]
    Data {
        /// Config path.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A `[train]` setting is invalid.
    #[error("{path}: {reason}")]
    Train {
        /// Config path.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A `[[phase]]` is invalid.
    #[error("{path}: {source}")]
    Phase {
        /// Config path.
        path: PathBuf,
        /// What is wrong.
        source: PhaseError,
    },
}

impl RunConfig {
    /// Reads and validates a TOML config; loads any demonstrations file it names.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and, for TOML errors, the line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: RunConfig = toml::from_str(&text).map_err(|source| ConfigError::Toml {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.prompt.resolve_files(base)?;
        cfg.data.check_split().map_err(|reason| ConfigError::Data {
            path: path.to_path_buf(),
            reason,
        })?;
        if let Some(lora) = &cfg.train.lora {
            lora.validate().map_err(|reason| ConfigError::Train {
                path: path.to_path_buf(),
                reason,
            })?;
        }
        cfg.check_phases().map_err(|source| ConfigError::Phase {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_engine_names_a_served_engine_and_its_server() {
        use crate::env::RolloutEngine;
        let cfg: RunConfig = toml::from_str(
            "[rollout]\nengine = \"openai\"\n[rollout.openai]\nurl = \"http://127.0.0.1:8000\"\n",
        )
        .unwrap();
        assert_eq!(cfg.rollout.engine, RolloutEngine::Openai);
        assert_eq!(cfg.rollout.openai.url, "http://127.0.0.1:8000");
        // The default is the local engine, and a written config reads back the same.
        let local: RunConfig = toml::from_str("").unwrap();
        assert_eq!(local.rollout.engine, RolloutEngine::Local);
        let back: RunConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back.rollout, cfg.rollout);
        let err = toml::from_str::<RunConfig>("[rollout]\nengine = \"vllm\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("local") && err.contains("openai"), "{err}");
    }

    #[test]
    fn data_train_takes_one_file_or_a_list() {
        let one: RunConfig = toml::from_str("[data]\ntrain = \"a.jsonl\"\n").unwrap();
        assert_eq!(one.data.train, vec![PathBuf::from("a.jsonl")]);
        let many: RunConfig =
            toml::from_str("[data]\ntrain = [\"a.jsonl\", \"b.jsonl\"]\n").unwrap();
        assert_eq!(
            many.data.train,
            vec![PathBuf::from("a.jsonl"), PathBuf::from("b.jsonl")]
        );
        // A written config reads back the same.
        let back: RunConfig = toml::from_str(&toml::to_string(&many).unwrap()).unwrap();
        assert_eq!(back.data, many.data);
        assert!(toml::from_str::<RunConfig>("[data]\ntrain = 3\n").is_err());
    }

    #[test]
    fn phase_overrides_merge_key_by_key_and_bad_keys_name_the_phase() {
        let cfg: RunConfig = toml::from_str(
            r#"
[rollout]
temperature = 1.0
top_k = 3
[train]
learning_rate = 1e-5
[[phase]]
name = "stage2"
kind = "rl"
steps = 3
reward = { kind = "stage2" }
rollout = { temperature = 1.2 }
"#,
        )
        .unwrap();
        let p = cfg.phase_config(&cfg.phase[0]).unwrap();
        assert_eq!(p.rollout.temperature, 1.2);
        assert_eq!(p.rollout.top_k, 3, "keys the phase does not name are kept");
        assert_eq!(p.train.learning_rate, 1e-5);
        assert_eq!(p.reward.kind, RewardKind::Stage2);
        assert!(p.phase.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "[[phase]]\nname = \"s1\"\nkind = \"rl\"\nrollout = { temprature = 1.2 }\n",
        )
        .unwrap();
        let e = RunConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("s1") && e.contains("temprature") && e.contains("bad.toml"),
            "{e}"
        );
        std::fs::write(
            &path,
            "[[phase]]\nname = \"a\"\nkind = \"eval\"\n[[phase]]\nname = \"a\"\nkind = \"rl\"\n",
        )
        .unwrap();
        let e = RunConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn a_phase_reward_is_stated_whole_and_never_inherits_step_weights() {
        let cfg: RunConfig = toml::from_str(
            r#"
[reward]
kind = "stage1"
answer = "f1"
[reward.step]
new_support = 0.3
repeat = -0.25
[[phase]]
name = "stage1"
kind = "rl"
[[phase]]
name = "stage2"
kind = "rl"
reward = { kind = "stage2" }
[[phase]]
name = "stage2-steps"
kind = "rl"
reward = { kind = "stage2", step = { new_support = 0.1 } }
"#,
        )
        .unwrap();
        // A phase without a reward table takes [reward] as it is.
        let s1 = cfg.phase_config(&cfg.phase[0]).unwrap();
        assert_eq!(s1.reward, cfg.reward);
        // A phase that states a reward gets exactly that: no step weights, default answer term.
        let s2 = cfg.phase_config(&cfg.phase[1]).unwrap();
        assert_eq!(s2.reward.kind, RewardKind::Stage2);
        assert!(!s2.reward.step.enabled(), "{:?}", s2.reward.step);
        assert_eq!(s2.reward.answer, crate::reward::AnswerTerm::CoverEm);
        // Step weights it states are its own, none inherited (repeat stays at its default 0).
        let s3 = cfg.phase_config(&cfg.phase[2]).unwrap();
        assert_eq!(s3.reward.step.new_support, 0.1);
        assert_eq!(s3.reward.step.repeat, 0.0);
    }

    #[test]
    fn phases_get_distinct_seeds_unless_they_set_one() {
        let cfg: RunConfig = toml::from_str(
            r#"
[train]
seed = 5
[[phase]]
name = "stage1"
kind = "rl"
[[phase]]
name = "stage2"
kind = "rl"
[[phase]]
name = "pinned"
kind = "rl"
train = { seed = 5 }
"#,
        )
        .unwrap();
        let seeds: Vec<u64> = cfg
            .phase
            .iter()
            .map(|p| cfg.phase_config(p).unwrap().train.seed)
            .collect();
        assert_ne!(
            seeds[0], seeds[1],
            "stage 1 and stage 2 draw in distinct orders"
        );
        assert_eq!(seeds[0], phase_seed(5, "stage1"));
        assert_ne!(phase_seed(5, "stage1"), phase_seed(6, "stage1"));
        assert_eq!(seeds[2], 5, "an explicit seed is kept");
        // Distinct seeds give distinct question orders.
        let order = |seed| {
            let mut st = crate::rl::checkpoint::TrainState {
                seed,
                ..Default::default()
            };
            st.next_indices(100, 10)
        };
        assert_ne!(order(seeds[0]), order(seeds[1]));
    }

    #[test]
    fn data_part_selects_its_questions_and_bad_parts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let qa = dir.path().join("qa.jsonl");
        let rows: String = (0..200)
            .map(|i| format!("{{\"question\": \"Question {i}?\", \"answer\": \"a{i}\"}}\n"))
            .collect();
        std::fs::write(&qa, rows).unwrap();
        let text = format!(
            r#"
[data]
train = {qa:?}
split = {{ seed = 1, parts = {{ coldstart = 0.6, rl = 0.4 }} }}
[[phase]]
name = "collect"
kind = "collect"
data = {{ part = "coldstart" }}
[[phase]]
name = "stage1"
kind = "rl"
data = {{ part = "rl" }}
"#
        );
        let cfg: RunConfig = toml::from_str(&text).unwrap();
        let cold = cfg
            .phase_config(&cfg.phase[0])
            .unwrap()
            .data
            .read_train()
            .unwrap();
        let rl = cfg
            .phase_config(&cfg.phase[1])
            .unwrap()
            .data
            .read_train()
            .unwrap();
        assert_eq!(cold.len() + rl.len(), 200);
        assert!(
            cold.len() > 90 && rl.len() > 50,
            "{} / {}",
            cold.len(),
            rl.len()
        );
        assert!(cold
            .iter()
            .all(|c| rl.iter().all(|r| r.question != c.question)));
        // The whole set without a part.
        assert_eq!(cfg.data.read_train().unwrap().len(), 200);

        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text.replace("part = \"rl\"", "part = \"lr\"")).unwrap();
        let e = RunConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("stage1") && e.contains("\"lr\""), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[rollout]\nsamples_per_questoin = 3\n").unwrap();
        let err = RunConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("samples_per_questoin") && err.contains("bad.toml"),
            "{err}"
        );
    }
}
