//! Score answers and whole solutions the way training and evaluation do.
//!
//! `cargo run --release --example reward_rules`
//!
//! Three layers, each a function of text only (DESIGN §4):
//! 1. answer metrics — EM, cover-EM and token F1 after HotpotQA's normalization (lower case,
//!    no punctuation or articles), best over the gold aliases;
//! 2. the rule rewards of R1-Searcher's two stages, behind the [`RewardFn`] seam: stage 1 pays
//!    for the retrieval and answer *format* and cover-EM; stage 2 pays F1 and fines any
//!    format error −2;
//! 3. rescoring a predictions file (`sleuth eval --rescore`), which reports percent.

use std::io::Write;

use sleuth::eval::rescore;
use sleuth::reward::{score_answer, AnswerRules, RewardFn, Stage1Reward, Stage2Reward};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let golds = vec!["Arrowhead Stadium".to_string(), "GEHA Field".to_string()];

    // 1. Answer metrics.
    for pred in [
        "arrowhead stadium",
        "The Arrowhead Stadium in Kansas City",
        "Kauffman Stadium",
    ] {
        let m = score_answer(pred, &golds);
        println!(
            "{pred:<40} EM {} cover-EM {} F1 {:.2}",
            m.em as u8, m.cover_em as u8, m.f1
        );
    }

    // 2. Rule rewards of a solution: the text the policy wrote after `Assistant: <think>`,
    //    with the environment's documents block inside it.
    let searched = "I need the stadium.<|begin_of_query|> Kansas City Chiefs stadium<|end_of_query|>\n\n\
        <|begin_of_documents|>\n(1)\"Arrowhead Stadium\" Arrowhead Stadium is home of the Kansas City Chiefs.\n\
        <|end_of_documents|>\n\nThe documents name it.</think>\n<answer> Arrowhead Stadium </answer>";
    let guessed = "I recall it.</think>\n<answer> Arrowhead Stadium </answer>";
    let malformed = "Arrowhead Stadium";
    for (name, solution) in [
        ("searched", searched),
        ("guessed", guessed),
        ("malformed", malformed),
    ] {
        for reward in [&Stage1Reward::default() as &dyn RewardFn, &Stage2Reward] {
            let b = reward.score(solution, &golds);
            println!(
                "{name:<10} {}: total {:+.2} (answer {:+.2}, retrieval format {:+.2}, answer format {:+.2}, penalty {:+.2}), {} searches",
                reward.name(),
                b.total,
                b.answer,
                b.retrieval_format,
                b.answer_format,
                b.penalty,
                b.searches
            );
        }
    }

    // 3. A predictions file, one JSON object per line (`answer` may be a string or a list).
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(
        file,
        r#"{{"pred_ans": "Arrowhead", "answer": ["Arrowhead Stadium"]}}"#
    )?;
    writeln!(
        file,
        r#"{{"pred_ans": "arrowhead stadium", "answer": "Arrowhead Stadium"}}"#
    )?;
    writeln!(file, r#"{{"pred_ans": null, "answer": "GEHA Field"}}"#)?;
    // R1-Searcher's answer rules (the default), every row (no limit).
    let report = rescore(file.path(), AnswerRules::R1Searcher, None)?;
    println!(
        "\nrescored {} rows: EM {:.1} %, cover-EM {:.1} %, F1 {:.1} %",
        report.n, report.em, report.cover_em, report.f1
    );
    Ok(())
}
