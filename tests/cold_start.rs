//! The cold-start chain on the tiny model: SFT on one hand-written episode until the policy
//! reproduces it → `collect` keeps its format-valid rollouts (stored without demonstrations,
//! documents masked) → SFT on what was collected → checkpoint → one RL step starting from
//! that checkpoint (`sleuth train --init`).

mod common;
use common::default_tokenizer as tokenizer;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use sleuth::env::protocol::documents_block;
use sleuth::env::{Env, PromptConfig, RolloutConfig};
use sleuth::model::backend::{self, Train};
use sleuth::model::gguf::GgufFile;
use sleuth::model::{Llama, LlamaConfig, Tokenizer};
use sleuth::reward::{FormatReport, RewardKind};
use sleuth::rl::collect::{
    collect, entity_query, judge, scripted, CollectOptions, ScriptPhrases, Verdict,
};
use sleuth::rl::sft::{SftExample, SftTrainer};
use sleuth::rl::Question;
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

/// The environment the collectors run in: `tok`, `retriever`, and copies of the settings.
fn env(
    tok: &Tokenizer,
    retriever: Arc<dyn Retriever>,
    prompt: &PromptConfig,
    rollout: &RolloutConfig,
) -> Env {
    Env {
        tokenizer: tok.clone(),
        retriever,
        prompt: prompt.clone(),
        rollout: rollout.clone(),
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
        ..Default::default()
    }];
    let mut kept = Vec::new();
    let stats = collect(
        &sft.learner.model.valid(),
        &env(&tok, Arc::new(OneDoc), &prompt(), &rollout_cfg),
        &questions,
        &CollectOptions {
            batch: 1,
            require_correct: true,
            min_searches: 1,
            seed: 0,
        },
        |ex| kept.push(ex.clone()),
    )
    .unwrap();
    assert_eq!(stats.sampled, 2);
    assert_eq!(stats.kept, 2, "{stats:?}");
    assert_eq!(stats.kept_by_searches, [0, 2, 0, 0], "{stats:?}");
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
        &sft.learner.model.valid(),
        &env(&tok, Arc::new(OneDoc), &with_demo, &rollout_cfg),
        &questions,
        &CollectOptions {
            batch: 1,
            require_correct: false,
            min_searches: 1,
            seed: 0,
        },
        |ex| {
            assert_eq!(
                &ex.tokens[..ex.prompt_len],
                &example.tokens[..example.prompt_len]
            )
        },
    )
    .unwrap();
    assert_eq!(stats.sampled, 2);

    // The same rollouts, asked for two searches each: none is kept.
    let stats = collect(
        &sft.learner.model.valid(),
        &env(&tok, Arc::new(OneDoc), &prompt(), &rollout_cfg),
        &questions,
        &CollectOptions {
            batch: 1,
            require_correct: false,
            min_searches: 2,
            seed: 0,
        },
        |_| panic!("a one-search trajectory kept under --min-searches 2"),
    )
    .unwrap();
    assert_eq!(
        (stats.format_ok, stats.too_few_searches, stats.kept),
        (2, 2, 0),
        "{stats:?}"
    );

    // 3. SFT on the collected trajectories, then checkpoint.
    let dir = tempfile::tempdir().unwrap();
    // (A fresh AdamW's first step moves every weight by ±lr: keep it small here.)
    let gentle = TrainConfig {
        learning_rate: 1e-5,
        ..train_cfg.clone()
    };
    let mut sft2 = SftTrainer::new(
        sft.learner.model.clone(),
        arch.clone(),
        gentle,
        kept,
        device,
    )
    .unwrap();
    assert!(sft2.step().loss.is_finite());
    sft2.learner.save(dir.path()).unwrap();

    // 4. RL starts from the checkpoint's weights.
    let init = checkpoint::load_model(dir.path(), Llama::<Train>::random(&arch, &device), &device)
        .unwrap();
    assert_eq!(
        init.embed_tokens.val().into_data(),
        sft2.learner.model.embed_tokens.val().into_data()
    );
    let mut rl = Trainer::new(
        init,
        arch,
        sleuth::env::Env {
            tokenizer: tok,
            retriever: std::sync::Arc::new(OneDoc),
            prompt: prompt(),
            // RL samples the untruncated distribution (the trainer refuses top-k/top-p cuts).
            rollout: RolloutConfig {
                temperature: 1.0,
                top_p: 1.0,
                top_k_sampling: 0,
                ..rollout_cfg
            },
        },
        sleuth::reward::Rewards {
            rule: RewardKind::Stage1.build(),
            step: Default::default(),
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
            ..Default::default()
        },
        Question {
            question: "What is the capital of Kansas?".into(),
            answers: vec!["Topeka".into()],
            ..Default::default()
        },
    ];
    let mut kept = Vec::new();
    let stats = sleuth::rl::collect::scripted(
        &env(&tok, Arc::new(OneDoc), &with_demo, &rollout),
        &Default::default(),
        &questions,
        1,
        0,
        |ex| kept.push(ex.clone()),
    )
    .unwrap();
    assert_eq!((stats.questions, stats.format_ok, stats.kept), (2, 1, 1));
    assert_eq!(stats.kept_by_searches, [0, 1, 0, 0]);
    assert_eq!(stats.uncovered, 1, "Topeka is not in the documents");
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

fn page(title: &str, text: &str) -> Hit {
    Hit {
        id: title.into(),
        title: title.into(),
        text: text.into(),
        score: 1.0,
    }
}

/// A fake search engine: exact queries get their own pages, any other query the fallback
/// pages; every query is recorded.
struct ByQuery {
    pages: Vec<(&'static str, Vec<Hit>)>,
    fallback: Vec<Hit>,
    queries: Mutex<Vec<String>>,
}

impl ByQuery {
    fn new(fallback: Vec<Hit>, pages: Vec<(&'static str, Vec<Hit>)>) -> Arc<Self> {
        Arc::new(Self {
            pages,
            fallback,
            queries: Mutex::new(Vec::new()),
        })
    }
}

impl Retriever for ByQuery {
    fn search(&self, q: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        self.queries.lock().unwrap().push(q.to_string());
        let hits = self
            .pages
            .iter()
            .find(|(query, _)| *query == q)
            .map_or(&self.fallback, |(_, hits)| hits);
        Ok(hits.iter().take(k).cloned().collect())
    }
}

/// The response's mask-0 tokens as text, and the whole response as text.
fn masked_and_solution(tok: &Tokenizer, ex: &SftExample) -> (String, String) {
    let response = &ex.tokens[ex.prompt_len..];
    let mask = &ex.mask[ex.prompt_len..];
    let masked: Vec<u32> = response
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m == 0)
        .map(|(&t, _)| t)
        .collect();
    (
        sleuth::model::text_of(tok, &masked),
        sleuth::model::text_of(tok, response),
    )
}

#[test]
fn entity_queries_drop_the_disambiguator() {
    assert_eq!(entity_query("Lilu (mythology)"), "Lilu");
    assert_eq!(
        entity_query("Alexandria International Airport (Louisiana)"),
        "Alexandria International Airport"
    );
    assert_eq!(
        entity_query("Leland, North Carolina"),
        "Leland, North Carolina"
    );
    assert_eq!(entity_query("(What) If"), "(What) If");
}

/// A bridge question whose first search finds the first-hop page, which names the bridge
/// entity: a second search for that entity, both documents blocks masked out, the answer
/// grounded in the second block.
#[test]
fn scripted_bridge_question_searches_the_bridge_entity() {
    let Some(tok) = tokenizer() else { return };
    let question = "Who directed the film that was shot in Leland, North Carolina in 1986?";
    let leland = page(
        "Leland, North Carolina",
        "Leland is a town in Brunswick County. The film Maximum Overdrive was shot there in 1986.",
    );
    let film = page(
        "Maximum Overdrive (film)",
        "Maximum Overdrive is a 1986 horror film written and directed by Stephen King.",
    );
    let engine = ByQuery::new(
        vec![leland.clone(), page("Brunswick County", "A county.")],
        vec![("Maximum Overdrive", vec![film.clone()])],
    );
    let rollout = RolloutConfig::default();
    let with_demo = PromptConfig {
        demonstrations: vec!["User:Q?\nAssistant: <think> demo </think>".into()],
        ..prompt()
    };
    let questions = vec![Question {
        question: question.into(),
        answers: vec!["Stephen King".into()],
        support_titles: vec![
            "Leland, North Carolina".into(),
            "Maximum Overdrive (film)".into(),
        ],
        kind: Some("bridge".into()),
    }];
    let mut kept = Vec::new();
    let stats = scripted(
        &env(&tok, engine.clone(), &with_demo, &rollout),
        &ScriptPhrases::default(),
        &questions,
        1,
        7,
        |ex| kept.push(ex.clone()),
    )
    .unwrap();
    assert_eq!(stats.kept, 1, "{stats:?}");
    assert_eq!(stats.kept_by_searches, [0, 0, 1, 0]);
    assert_eq!((stats.hops_unseen, stats.kept_with_unseen_hop), (0, 0));
    assert_eq!(
        *engine.queries.lock().unwrap(),
        vec![question.to_string(), "Maximum Overdrive".to_string()]
    );
    let ex = &kept[0];
    assert_eq!(
        &ex.tokens[..ex.prompt_len],
        &prompt().encode(&tok, question).unwrap()[..],
        "prompt without demonstrations"
    );
    assert!(ex.mask[..ex.prompt_len].iter().all(|&m| m == 0));
    let (masked, solution) = masked_and_solution(&tok, ex);
    let blocks = format!(
        "{}{}",
        documents_block(&[leland.clone(), page("Brunswick County", "A county.")], 0),
        documents_block(&[film], 0)
    );
    assert_eq!(
        masked, blocks,
        "exactly the two documents blocks carry mask 0"
    );
    let report = FormatReport::check(&solution);
    assert!(report.all_ok(), "{solution}");
    assert_eq!(report.searches, 2);
    assert_eq!(report.answer.as_deref(), Some("Stephen King"));
    assert!(
        solution.contains("<|begin_of_query|> Maximum Overdrive <|end_of_query|>"),
        "{solution}"
    );
    // The first documents named the bridge entity, and the reasoning says so.
    let named = ScriptPhrases::default().bridge_named;
    assert!(
        named
            .iter()
            .any(|p| solution.contains(&p.replace("{entity}", "Maximum Overdrive"))),
        "{solution}"
    );
    // Before answering, it quotes the sentence of the second block that holds the answer.
    let sentence = "Maximum Overdrive is a 1986 horror film written and directed by Stephen King.";
    assert!(masked.contains(sentence));
    assert_eq!(
        closing_reason(&solution),
        quoted_reason(
            &solution,
            "Maximum Overdrive (film)",
            sentence,
            "Stephen King"
        )
    );
}

/// The reasoning between the last documents block and `</think>`, trimmed.
fn closing_reason(solution: &str) -> String {
    let tail = solution.rsplit("<|end_of_documents|>").next().unwrap();
    tail.split("</think>").next().unwrap().trim().to_string()
}

/// The default `quote_answer` wording whose filled-in form the solution holds, filled in.
fn quoted_reason(solution: &str, title: &str, sentence: &str, answer: &str) -> String {
    let filled: Vec<String> = ScriptPhrases::default()
        .quote_answer
        .iter()
        .map(|p| {
            p.replace("{title}", title)
                .replace("{sentence}", sentence)
                .replace("{answer}", answer)
        })
        .collect();
    filled
        .into_iter()
        .find(|f| solution.contains(f.as_str()))
        .unwrap_or_else(|| panic!("no quote_answer wording quoting {sentence:?}: {solution}"))
}

/// The first search names no bridge entity and the question does not either: the policy could
/// not know it, so it is never searched (`hops_unseen`). The episode answers from its one
/// search when a sentence there holds the answer, and is dropped as `uncovered` otherwise.
#[test]
fn scripted_bridge_question_never_searches_an_unseen_entity() {
    let Some(tok) = tokenizer() else { return };
    let question = "Who directed the film that was shot in Leland, North Carolina in 1986?";
    let questions = vec![Question {
        question: question.into(),
        answers: vec!["Stephen King".into()],
        support_titles: vec![
            "Leland, North Carolina".into(),
            "Maximum Overdrive (film)".into(),
        ],
        kind: Some("bridge".into()),
    }];
    let film = page(
        "Maximum Overdrive (film)",
        "Maximum Overdrive is a 1986 horror film written and directed by Stephen King.",
    );
    let run = |leland_text: &'static str, min_searches: usize| {
        let engine = ByQuery::new(
            vec![page("Leland, North Carolina", leland_text)],
            vec![("Maximum Overdrive", vec![film.clone()])],
        );
        let mut kept = Vec::new();
        let stats = scripted(
            &env(&tok, engine.clone(), &prompt(), &RolloutConfig::default()),
            &ScriptPhrases::default(),
            &questions,
            min_searches,
            3,
            |ex| kept.push(masked_and_solution(&tok, ex).1),
        )
        .unwrap();
        let queries = engine.queries.lock().unwrap().clone();
        (stats, kept, queries)
    };

    // Nothing names the film: one search, and without the answer in it, nothing kept.
    let (stats, kept, queries) = run(
        "Leland is a town in Brunswick County. A horror film was shot there in 1986.",
        1,
    );
    assert_eq!(queries, vec![question.to_string()]);
    assert_eq!(stats.hops_unseen, 1, "{stats:?}");
    assert_eq!(
        (stats.uncovered, stats.kept, kept.len()),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.kept_with_unseen_hop, 0);

    // The first page names the director but not the film: kept as a one-search episode that
    // quotes it, counted as kept with an unseen hop.
    let leland =
        "Leland is a town in Brunswick County. A horror film by Stephen King was shot there.";
    let (stats, kept, queries) = run(leland, 1);
    assert_eq!(queries, vec![question.to_string()]);
    assert_eq!(stats.hops_unseen, 1, "{stats:?}");
    assert_eq!(stats.kept_by_searches, [0, 1, 0, 0], "{stats:?}");
    assert_eq!(stats.kept_with_unseen_hop, 1, "{stats:?}");
    let report = FormatReport::check(&kept[0]);
    assert!(report.all_ok(), "{}", kept[0]);
    assert_eq!(report.searches, 1);
    assert!(!kept[0].contains("Maximum Overdrive"), "{}", kept[0]);
    quoted_reason(
        &kept[0],
        "Leland, North Carolina",
        "A horror film by Stephen King was shot there.",
        "Stephen King",
    );

    // The same episode under min_searches 2 is dropped for searching once.
    let (stats, kept, _) = run(leland, 2);
    assert_eq!((stats.too_few_searches, stats.kept, kept.len()), (1, 0, 0));
    assert_eq!(stats.kept_with_unseen_hop, 0);
}

/// Visibility is re-checked after every hop: the first search misses both support pages, the
/// question names the first (searched with a `bridge_in_question` phrase), whose page names
/// the second (searched with a `bridge_named` phrase).
#[test]
fn scripted_follow_up_hops_follow_what_each_hop_reveals() {
    let Some(tok) = tokenizer() else { return };
    let question = "Which sea does the river at Alpha Town reach?";
    let engine = ByQuery::new(
        vec![page("Seas", "Seas are large bodies of salt water.")],
        vec![
            (
                "Alpha Town",
                vec![page("Alpha Town", "Alpha Town lies on the Beta River.")],
            ),
            (
                "Beta River",
                vec![page(
                    "Beta River",
                    "The Beta River flows into the Gamma Sea.",
                )],
            ),
        ],
    );
    let questions = vec![Question {
        question: question.into(),
        answers: vec!["Gamma Sea".into()],
        // The second hop's page first: the order is not what makes it searchable.
        support_titles: vec!["Beta River".into(), "Alpha Town".into()],
        kind: Some("bridge".into()),
    }];
    let mut kept = Vec::new();
    let stats = scripted(
        &env(&tok, engine.clone(), &prompt(), &RolloutConfig::default()),
        &ScriptPhrases::default(),
        &questions,
        1,
        0,
        |ex| kept.push(masked_and_solution(&tok, ex).1),
    )
    .unwrap();
    assert_eq!(
        *engine.queries.lock().unwrap(),
        vec![question, "Alpha Town", "Beta River"]
    );
    assert_eq!(stats.kept_by_searches, [0, 0, 0, 1], "{stats:?}");
    assert_eq!(stats.hops_unseen, 0);
    let solution = &kept[0];
    let phrases = ScriptPhrases::default();
    let said = |pool: &[String], entity: &str| {
        pool.iter()
            .any(|p| solution.contains(&p.replace("{entity}", entity)))
    };
    assert!(
        said(&phrases.bridge_in_question, "Alpha Town"),
        "{solution}"
    );
    assert!(said(&phrases.bridge_named, "Beta River"), "{solution}");
    quoted_reason(
        solution,
        "Beta River",
        "The Beta River flows into the Gamma Sea.",
        "Gamma Sea",
    );
}

/// A yes/no comparison is kept only when both compared pages came back: it quotes the first
/// sentence of each and answers yes/no. Without the second page it is dropped as `uncovered`.
#[test]
fn scripted_yes_no_comparison_needs_both_support_pages() {
    let Some(tok) = tokenizer() else { return };
    let question = "Are Alice Example and Bob Sample both painters?";
    let alice = page(
        "Alice Example",
        "Alice Example (born 1900) was a painter. She lived in Paris.",
    );
    let bob = page(
        "Bob Sample (writer)",
        "Bob Sample (born 1920) was a writer. He wrote novels.",
    );
    let questions = vec![Question {
        question: question.into(),
        answers: vec!["no".into()],
        support_titles: vec!["Alice Example".into(), "Bob Sample (writer)".into()],
        kind: Some("comparison".into()),
    }];
    let run = |bob_hits: Vec<Hit>| {
        let engine = ByQuery::new(
            vec![page("Painting", "Painting is an art.")],
            vec![
                ("Alice Example", vec![alice.clone()]),
                ("Bob Sample", bob_hits),
            ],
        );
        let mut kept = Vec::new();
        let stats = scripted(
            &env(&tok, engine.clone(), &prompt(), &RolloutConfig::default()),
            &ScriptPhrases::default(),
            &questions,
            1,
            0,
            |ex| kept.push(masked_and_solution(&tok, ex).1),
        )
        .unwrap();
        let queries = engine.queries.lock().unwrap().clone();
        (stats, kept, queries)
    };
    let (stats, kept, queries) = run(vec![bob.clone()]);
    assert_eq!(queries, vec![question, "Alice Example", "Bob Sample"]);
    assert_eq!((stats.kept, stats.kept_yes_no), (1, 1), "{stats:?}");
    let solution = &kept[0];
    let report = FormatReport::check(solution);
    assert!(report.all_ok(), "{solution}");
    assert_eq!(report.answer.as_deref(), Some("no"));
    let reason = closing_reason(solution);
    let expected: Vec<String> = ScriptPhrases::default()
        .quote_yes_no
        .iter()
        .map(|p| {
            p.replace("{first_title}", "Alice Example")
                .replace("{first}", "Alice Example (born 1900) was a painter.")
                .replace("{second_title}", "Bob Sample (writer)")
                .replace("{second}", "Bob Sample (born 1920) was a writer.")
                .replace("{answer}", "no")
        })
        .collect();
    assert!(expected.contains(&reason), "{reason}");

    // The search for Bob Sample finds another page: no second passage to compare, dropped.
    let (stats, kept, queries) = run(vec![page("Bob Sampling", "Sampling is statistics.")]);
    assert_eq!(queries.len(), 3);
    assert_eq!((stats.kept, stats.kept_yes_no, stats.uncovered), (0, 0, 1));
    assert!(kept.is_empty());
}

/// Single-hop questions (NQ-open) search once, even when the gold page did not come back and
/// its entity is in view; kept when a sentence of the inserted (truncated) passage holds an
/// answer.
#[test]
fn scripted_single_hop_question_searches_once() {
    let Some(tok) = tokenizer() else { return };
    let novel = page(
        "It (novel)",
        "It is a 1986 horror novel. It was written by Stephen King. The story follows seven children.",
    );
    let engine = ByQuery::new(vec![novel.clone()], vec![]);
    let single = |question: &str, answers: &[&str], title: &str| Question {
        question: question.into(),
        answers: answers.iter().map(|a| a.to_string()).collect(),
        support_titles: vec![title.into()],
        kind: Some("single-hop".into()),
    };
    let questions = vec![
        single(
            "who wrote the novel it",
            &["Stephen King", "King"],
            "It (novel)",
        ),
        single(
            "who directed the film it",
            &["Andy Muschietti"],
            "It (2017 film)",
        ),
    ];
    // 2 title words + 12 text words: the passage is cut right after "Stephen King.".
    let rollout = RolloutConfig {
        doc_max_words: 14,
        ..Default::default()
    };
    let mut kept = Vec::new();
    let stats = scripted(
        &env(&tok, engine.clone(), &prompt(), &rollout),
        &ScriptPhrases::default(),
        &questions,
        1,
        0,
        |ex| kept.push(masked_and_solution(&tok, ex)),
    )
    .unwrap();
    assert_eq!(
        *engine.queries.lock().unwrap(),
        vec!["who wrote the novel it", "who directed the film it"]
    );
    assert_eq!(stats.kept_by_searches, [0, 1, 0, 0], "{stats:?}");
    assert_eq!((stats.uncovered, stats.hops_unseen), (1, 0), "{stats:?}");
    let (masked, solution) = &kept[0];
    assert_eq!(*masked, documents_block(std::slice::from_ref(&novel), 14));
    let report = FormatReport::check(solution);
    assert!(report.all_ok(), "{solution}");
    assert_eq!(report.answer.as_deref(), Some("Stephen King"));
    quoted_reason(
        solution,
        "It (novel)",
        "It was written by Stephen King.",
        "Stephen King",
    );
}

/// `min_searches = 2` drops the episode whose first search already found every support title
/// (counted in `too_few_searches`) and keeps the one that needed a second hop.
#[test]
fn scripted_min_searches_drops_one_search_episodes() {
    let Some(tok) = tokenizer() else { return };
    let both = vec![
        page("Alpha Town", "Alpha Town lies on the Beta River."),
        page("Beta River", "The Beta River flows into the Gamma Sea."),
    ];
    let engine = ByQuery::new(
        vec![page("Alpha Town", "Alpha Town lies on the Beta River.")],
        vec![
            (
                "Which sea does the river at Alpha Town reach?",
                both.clone(),
            ),
            ("Beta River", vec![both[1].clone()]),
        ],
    );
    let ask = |question: &str| Question {
        question: question.into(),
        answers: vec!["Gamma Sea".into()],
        support_titles: vec!["Alpha Town".into(), "Beta River".into()],
        kind: Some("bridge".into()),
    };
    let questions = vec![
        ask("Which sea does the river at Alpha Town reach?"),
        ask("Where does the river of Alpha Town end?"),
    ];
    let run = |min_searches| {
        let mut kept = Vec::new();
        let stats = scripted(
            &env(&tok, engine.clone(), &prompt(), &RolloutConfig::default()),
            &ScriptPhrases::default(),
            &questions,
            min_searches,
            0,
            |ex| kept.push(ex.question.clone()),
        )
        .unwrap();
        (stats, kept)
    };
    let (stats, kept) = run(1);
    assert_eq!(stats.kept_by_searches, [0, 1, 1, 0], "{stats:?}");
    assert_eq!((stats.too_few_searches, kept.len()), (0, 2));
    let (stats, kept) = run(2);
    assert_eq!(stats.kept_by_searches, [0, 0, 1, 0], "{stats:?}");
    assert_eq!(stats.too_few_searches, 1);
    assert_eq!(kept, vec![questions[1].question.clone()]);
}

/// A comparison question whose first search finds neither compared entity: one search per
/// entity (3 in all), unless `max_searches` caps them.
#[test]
fn scripted_comparison_question_searches_each_entity() {
    let Some(tok) = tokenizer() else { return };
    let question = "Who was born first, Alice Example or Bob Sample?";
    let alice = page("Alice Example", "Alice Example (born 1900) was a painter.");
    let bob = page(
        "Bob Sample (writer)",
        "Bob Sample (born 1920) was a writer.",
    );
    let engine = || {
        ByQuery::new(
            vec![page("Birth order", "Birth order is the rank by age.")],
            vec![
                ("Alice Example", vec![alice.clone()]),
                ("Bob Sample", vec![bob.clone()]),
            ],
        )
    };
    let questions = vec![Question {
        question: question.into(),
        answers: vec!["Alice Example".into()],
        support_titles: vec!["Alice Example".into(), "Bob Sample (writer)".into()],
        kind: Some("comparison".into()),
    }];
    let run = |engine: &Arc<ByQuery>, max_searches: usize| {
        let rollout = RolloutConfig {
            max_searches,
            ..Default::default()
        };
        let mut kept = Vec::new();
        let stats = scripted(
            &env(&tok, engine.clone(), &prompt(), &rollout),
            &ScriptPhrases::default(),
            &questions,
            1,
            0,
            |ex| kept.push(ex.clone()),
        )
        .unwrap();
        (stats, kept)
    };
    let three = engine();
    let (stats, kept) = run(&three, 8);
    assert_eq!(stats.kept_by_searches, [0, 0, 0, 1], "{stats:?}");
    assert_eq!(
        *three.queries.lock().unwrap(),
        vec![question, "Alice Example", "Bob Sample"]
    );
    let (masked, solution) = masked_and_solution(&tok, &kept[0]);
    assert_eq!(
        masked,
        format!(
            "{}{}{}",
            documents_block(&[page("Birth order", "Birth order is the rank by age.")], 0),
            documents_block(std::slice::from_ref(&alice), 0),
            documents_block(std::slice::from_ref(&bob), 0)
        )
    );
    let report = FormatReport::check(&solution);
    assert!(report.all_ok(), "{solution}");
    assert_eq!(report.searches, 3);
    assert_eq!(report.answer.as_deref(), Some("Alice Example"));
    let comparison = ScriptPhrases::default().comparison;
    for entity in ["Alice Example", "Bob Sample"] {
        assert!(
            comparison
                .iter()
                .any(|p| solution.contains(&p.replace("{entity}", entity))),
            "{solution}"
        );
    }

    // Capped at two searches: the second entity is never looked up, the answer is still
    // covered by the first two blocks.
    let two = engine();
    let (stats, _) = run(&two, 2);
    assert_eq!(stats.kept_by_searches, [0, 0, 1, 0], "{stats:?}");
    assert_eq!(two.queries.lock().unwrap().len(), 2);
}

/// The reasoning varies across questions (a deterministic choice from the seed and the
/// question index), and is the same again for the same seed.
#[test]
fn scripted_reasoning_varies_across_questions() {
    let Some(tok) = tokenizer() else { return };
    let questions: Vec<Question> = (0..8)
        .map(|i| Question {
            question: format!("Question {i}: in which city do the Kansas City Chiefs play?"),
            answers: vec!["Kansas City".into()],
            ..Default::default()
        })
        .collect();
    let solutions = |seed: u64| {
        let mut out = Vec::new();
        scripted(
            &env(&tok, Arc::new(OneDoc), &prompt(), &RolloutConfig::default()),
            &ScriptPhrases::default(),
            &questions,
            1,
            seed,
            |ex| out.push(masked_and_solution(&tok, ex).1),
        )
        .unwrap();
        out
    };
    let first = solutions(0);
    assert_eq!(first.len(), 8);
    let think = |s: &String| s.split("<|begin_of_query|>").next().unwrap().to_string();
    let answer_reason = |s: &String| {
        s.split("<|end_of_documents|>\n\n")
            .last()
            .unwrap()
            .to_string()
    };
    for solution in &first {
        quoted_reason(
            solution,
            "Arrowhead Stadium",
            "Arrowhead Stadium is in Kansas City.",
            "Kansas City",
        );
    }
    let firsts: std::collections::BTreeSet<String> = first.iter().map(think).collect();
    let lasts: std::collections::BTreeSet<String> = first.iter().map(answer_reason).collect();
    assert!(firsts.len() >= 3, "{firsts:?}");
    assert!(lasts.len() >= 3, "{lasts:?}");
    assert_eq!(solutions(0), first, "deterministic for a seed");
    assert_ne!(solutions(1), first, "another seed, other phrasings");
}

/// Rejection sampling keeps only trajectories that searched at least `min_searches` times.
#[test]
fn judge_rejects_trajectories_with_too_few_searches() {
    let answers = vec!["Kansas City".to_string()];
    let no_search = FormatReport::check(" I know this. </think>\n<answer> Kansas City </answer>");
    assert!(no_search.all_ok());
    assert_eq!(
        judge(&no_search, &answers, true, 1),
        Verdict::TooFewSearches
    );
    assert_eq!(judge(&no_search, &answers, true, 0), Verdict::Keep);
    let one_search = FormatReport::check(&format!(
        " Search. <|begin_of_query|> Chiefs <|end_of_query|>{}It is Kansas City. </think>\n<answer> Kansas City </answer>",
        documents_block(&[hit()], 0)
    ));
    assert_eq!(judge(&one_search, &answers, true, 1), Verdict::Keep);
    assert_eq!(
        judge(&one_search, &answers, true, 2),
        Verdict::TooFewSearches
    );
    let wrong = vec!["Topeka".to_string()];
    assert_eq!(judge(&one_search, &wrong, true, 1), Verdict::Incorrect);
    assert_eq!(judge(&one_search, &wrong, false, 1), Verdict::Keep);
    let broken = FormatReport::check(" <|begin_of_query|> Chiefs </think>\n<answer> x </answer>");
    assert_eq!(judge(&broken, &answers, false, 0), Verdict::BadFormat);
}
