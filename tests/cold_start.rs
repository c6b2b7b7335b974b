//! The cold-start chain on the tiny model: SFT on one hand-written episode until the policy
//! reproduces it → `collect` keeps its format-valid rollouts (stored without demonstrations,
//! documents masked) → SFT on what was collected → checkpoint → one RL step starting from
//! that checkpoint (`sleuth train --init`).

use std::path::Path;

use burn::module::AutodiffModule;
use sleuth::env::protocol::documents_block;
use sleuth::env::{PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Train};
use sleuth::model::gguf::GgufFile;
use sleuth::model::{Llama, LlamaConfig, Tokenizer};
use sleuth::reward::{FormatReport, RewardKind};
use sleuth::rl::collect::collect;
use sleuth::rl::sft::{SftExample, SftTrainer};
use sleuth::rl::trainer::Question;
use sleuth::rl::{checkpoint, TrainConfig, Trainer};
use sleuth::search::{Hit, Retriever, SearchError};

const QUESTION: &str = "In which city do the Kansas City Chiefs play?";

struct OneDoc;
impl Retriever for OneDoc {
    fn search(&self, _q: &str, _k: usize) -> Result<Vec<Hit>, SearchError> {
        Ok(vec![hit()])
    }
}

fn hit() -> Hit {
    Hit {
        id: "1".into(),
        title: "Arrowhead Stadium".into(),
        text: "Arrowhead Stadium is in Kansas City.".into(),
        score: 1.0,
    }
}

fn prompt() -> PromptConfig {
    PromptConfig {
        template: "User:{question}\nAssistant: <think>".into(),
        ..Default::default()
    }
}

/// The hand-written episode: prompt, policy text, the environment's document block, policy text.
fn demo(tok: &Tokenizer) -> SftExample {
    let mut tokens = prompt().encode(tok, QUESTION).unwrap();
    let prompt_len = tokens.len();
    let mut mask = vec![0u8; prompt_len];
    let mut push = |text: &str, m: u8, tokens: &mut Vec<u32>| {
        let ids = tok.encode(text, false).unwrap();
        mask.extend(std::iter::repeat_n(m, ids.len()));
        tokens.extend(ids);
    };
    push(
        " I need the stadium. <|begin_of_query|> Kansas City Chiefs stadium <|end_of_query|>",
        1,
        &mut tokens,
    );
    push(&documents_block(&[hit()], 0), 0, &mut tokens);
    push(
        "It is in Kansas City. </think>\n<answer> Kansas City </answer>",
        1,
        &mut tokens,
    );
    SftExample {
        question: QUESTION.into(),
        tokens,
        mask,
        prompt_len,
    }
}

#[test]
fn sft_collect_sft_then_rl_from_checkpoint() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} missing (run scripts/setup)", path.display());
        return;
    }
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let device = backend::device();
    <Train as burn::tensor::backend::Backend>::seed(&device, 1);
    let arch = LlamaConfig::tiny(tok.vocab_size());
    let train_cfg = TrainConfig {
        learning_rate: 1e-2,
        questions_per_step: 1,
        micro_batch: 1,
        weight_decay: 0.0,
        ..Default::default()
    };
    let example = demo(&tok);
    let solution = tok
        .decode(&example.tokens[example.prompt_len..], false)
        .unwrap();
    assert!(
        FormatReport::check(&solution).all_ok(),
        "the demo must be well-formed: {solution}"
    );

    // 1. SFT until the tiny policy reproduces the episode.
    let model = Llama::<Train>::random(&arch, &device);
    let mut sft = SftTrainer::new(
        model,
        arch.clone(),
        train_cfg.clone(),
        vec![example.clone()],
        device,
    )
    .unwrap();
    let first = sft.step().loss;
    let mut last = first;
    for _ in 0..60 {
        last = sft.step().loss;
    }
    assert!(
        last < 0.05 * first,
        "SFT loss should collapse: {first:.3} -> {last:.4}"
    );

    // 2. Collect greedy rollouts with a demonstration in the prompt; they are stored without it.
    let with_demo = PromptConfig {
        demonstrations: vec!["User:Q\nAssistant: <think> x </think>\n<answer> y </answer>".into()],
        ..prompt()
    };
    let rollout_cfg = RolloutConfig {
        samples_per_question: 2,
        max_new_tokens: 80,
        context_tokens: 256,
        temperature: 0.0,
        ..Default::default()
    };
    let questions = vec![Question {
        question: QUESTION.into(),
        answers: vec!["Kansas City".into()],
    }];
    let mut kept = Vec::new();
    let stats = collect(
        &sft.model.valid(),
        &tok,
        &OneDoc,
        &prompt(),
        &rollout_cfg,
        &questions,
        1,
        true,
        0,
        |ex| kept.push(ex.clone()),
    )
    .unwrap();
    assert_eq!(stats.sampled, 2);
    assert_eq!(stats.kept, 2, "{stats:?}");
    for ex in &kept {
        assert_eq!(ex.prompt_len, example.prompt_len);
        assert_eq!(
            &ex.tokens[..ex.prompt_len],
            &example.tokens[..example.prompt_len]
        );
        let docs = tok.encode(&documents_block(&[hit()], 0), false).unwrap();
        let at = ex
            .tokens
            .windows(docs.len())
            .position(|w| w == docs.as_slice())
            .expect("documents inserted");
        assert!(
            ex.mask[at..at + docs.len()].iter().all(|&m| m == 0),
            "documents carry no loss"
        );
        assert!(ex.mask[ex.prompt_len..at].iter().all(|&m| m == 1));
    }
    let stats = collect(
        &sft.model.valid(),
        &tok,
        &OneDoc,
        &with_demo,
        &rollout_cfg,
        &questions,
        1,
        false,
        0,
        |ex| {
            assert_eq!(
                &ex.tokens[..ex.prompt_len],
                &example.tokens[..example.prompt_len]
            )
        },
    )
    .unwrap();
    assert_eq!(stats.sampled, 2);

    // 3. SFT on the collected trajectories, then checkpoint.
    let dir = tempfile::tempdir().unwrap();
    // (A fresh AdamW's first step moves every weight by ±lr: keep it small here.)
    let gentle = TrainConfig {
        learning_rate: 1e-5,
        ..train_cfg.clone()
    };
    let mut sft2 = SftTrainer::new(sft.model.clone(), arch.clone(), gentle, kept, device).unwrap();
    assert!(sft2.step().loss.is_finite());
    sft2.save(dir.path()).unwrap();

    // 4. RL starts from the checkpoint's weights.
    let init = checkpoint::load_model(dir.path(), Llama::<Train>::random(&arch, &device), &device)
        .unwrap();
    assert_eq!(
        init.embed_tokens.val().into_data(),
        sft2.model.embed_tokens.val().into_data()
    );
    let mut rl = Trainer::new(
        init,
        arch,
        tok,
        Box::new(OneDoc),
        RewardKind::Stage1.build(),
        prompt(),
        RolloutConfig {
            temperature: 1.0,
            top_k_sampling: 5,
            ..rollout_cfg
        },
        TrainConfig {
            learning_rate: 1e-5,
            ..train_cfg
        },
        questions,
        device,
    )
    .unwrap();
    let m = rl.step().unwrap();
    assert_eq!(m.step, 1);
    assert!(m.reward_mean.is_finite() && m.loss.is_finite());
    // The cold-started policy searches in its rollouts.
    assert!(m.searches_mean > 0.0, "{m:?}");
}

/// `collect --scripted`: one grounded episode per question whose documents cover a gold answer,
/// the prompt without demonstrations, documents exactly as the environment renders them and
/// masked out, the rest mask 1 and format-valid.
#[test]
fn scripted_episodes_are_grounded_masked_and_format_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipping: {} missing (run scripts/setup)", path.display());
        return;
    }
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let with_demo = PromptConfig {
        demonstrations: vec!["User:Q?\nAssistant: <think> demo </think>".into()],
        ..prompt()
    };
    let rollout = RolloutConfig::default();
    let questions = vec![
        Question {
            question: QUESTION.into(),
            answers: vec![
                "a very long answer that has more than ten words in it, so skipped".into(),
                "Kansas City".into(),
            ],
        },
        Question {
            question: "What is the capital of Kansas?".into(),
            answers: vec!["Topeka".into()],
        },
    ];
    let mut kept = Vec::new();
    let stats = sleuth::rl::collect::scripted(
        &tok,
        &OneDoc,
        &with_demo,
        &rollout,
        &Default::default(),
        &questions,
        |ex| kept.push(ex.clone()),
    )
    .unwrap();
    assert_eq!((stats.questions, stats.format_ok, stats.kept), (2, 1, 1));
    let ex = &kept[0];
    assert_eq!(ex.question, QUESTION);
    let bare = prompt().encode(&tok, QUESTION).unwrap();
    assert_eq!(
        &ex.tokens[..ex.prompt_len],
        &bare[..],
        "prompt without demonstrations"
    );
    assert!(ex.mask[..ex.prompt_len].iter().all(|&m| m == 0));
    let response = &ex.tokens[ex.prompt_len..];
    let mask = &ex.mask[ex.prompt_len..];
    let masked: Vec<u32> = response
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m == 0)
        .map(|(&t, _)| t)
        .collect();
    assert_eq!(
        sleuth::model::text_of(&tok, &masked),
        documents_block(&[hit()], rollout.doc_max_words)
    );
    let solution = sleuth::model::text_of(&tok, response);
    let report = FormatReport::check(&solution);
    assert!(report.all_ok(), "{solution}");
    assert_eq!(report.answer.as_deref().map(str::trim), Some("Kansas City"));
    assert!(solution.contains(&format!("<|begin_of_query|> {QUESTION} <|end_of_query|>")));
}
