//! `sleuth eval --retrieval`'s library side: support recall@k and answer hit@k computed by hand
//! on a tiny index, the support-file reader, and the settings sweep.

use std::collections::HashMap;

use sleuth::corpus::Passage;
use sleuth::eval::retrieval::{evaluate_retrieval, read_support, sweep, QueryRewrite};
use sleuth::index::{build_bm25, IndexOptions, TokenizerKind};
use sleuth::qa::QaExample;
use sleuth::search::{Bm25Retriever, DEFAULT_TITLE_BOOST};

fn p(id: &str, title: &str, text: &str) -> Passage {
    Passage {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    }
}

fn qa(idx: i64, question: &str, answer: &str) -> QaExample {
    QaExample {
        idx: Some(idx),
        question: question.into(),
        answers: vec![answer.into()],
        support_titles: Vec::new(),
        kind: None,
    }
}

#[test]
fn recall_and_hits_match_a_hand_count() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    let passages = vec![
        p(
            "1",
            "Arrowhead Stadium",
            "Arrowhead Stadium is home of the Kansas City Chiefs.",
        ),
        p(
            "2",
            "Kansas City Chiefs",
            "The Chiefs play American football in Missouri.",
        ),
        p("3", "Paris", "Paris is the capital of France."),
        p("4", "Zebra", "Zebras are striped animals of Africa."),
    ];
    let opts = IndexOptions {
        progress: false,
        ..IndexOptions::default()
    };
    build_bm25(passages.into_iter().map(Ok), &idx, &opts).unwrap();
    let retriever = Bm25Retriever::open(&idx).unwrap();
    let examples = vec![
        // Both support pages are retrievable; the answer is in the top passage.
        qa(
            1,
            "Arrowhead Stadium Kansas City Chiefs",
            "Arrowhead Stadium",
        ),
        // One of two support titles exists; the answer string appears nowhere.
        qa(2, "capital of France", "Lyon"),
        // No support known (not in the map): counts for hit@k only.
        qa(3, "striped animals", "Africa"),
    ];
    let mut support = HashMap::new();
    support.insert(
        1,
        vec![
            "Arrowhead Stadium".to_string(),
            "Kansas City Chiefs".to_string(),
        ],
    );
    support.insert(2, vec!["Paris".to_string(), "Lyon".to_string()]);
    let rep = evaluate_retrieval(&retriever, &examples, &support, QueryRewrite::None, 2).unwrap();
    assert_eq!(rep.questions, 3);
    assert_eq!(rep.with_support, 2);
    // q1: 1 of 2 at k=1, 2 of 2 at k=5; q2: 1 of 2 at every k.
    assert_eq!(rep.support_recall.at1, 0.5);
    assert_eq!(rep.support_recall.at5, 0.75);
    assert_eq!(rep.support_recall.at10, 0.75);
    assert_eq!(rep.support_all.at5, 0.5);
    // q1 and q3 hit at k=1; q2 never does.
    assert!((rep.answer_hit.at1 - 0.6667).abs() < 1e-9, "{rep:?}");
    assert!((rep.answer_hit.at10 - 0.6667).abs() < 1e-9, "{rep:?}");

    // The sweep reports one row per setting, tagged with the index's tokenizer.
    let rows = sweep(
        &idx,
        &examples,
        &support,
        &[0.0, DEFAULT_TITLE_BOOST],
        &[QueryRewrite::None, QueryRewrite::DropStopWords],
        1,
    )
    .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| r.tokenizer == TokenizerKind::default().name()));
    let mut default_row = rows[2].report.clone();
    default_row.seconds = rep.seconds;
    assert_eq!(
        default_row, rep,
        "the default boost, no rewrite, is the default run"
    );
    assert_eq!(rows[2].title_boost, DEFAULT_TITLE_BOOST);
}

#[test]
fn support_file_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    std::fs::write(
        &path,
        "{\"idx\": 1, \"support_titles\": [\"A\", \"B\"]}\n{\"idx\": 2, \"support_titles\": [], \"source\": null}\n\n",
    )
    .unwrap();
    let map = read_support(&path).unwrap();
    assert_eq!(map.len(), 1, "rows without titles are skipped");
    assert_eq!(map[&1], vec!["A", "B"]);

    std::fs::write(
        &path,
        "{\"idx\": 1, \"support_titles\": [\"A\"]}\n{\"idx\": 2, \"support_titles\": \"A\"}\n",
    )
    .unwrap();
    let err = read_support(&path).unwrap_err().to_string();
    assert!(
        err.contains("s.jsonl:2") && err.contains("support_titles"),
        "{err}"
    );
    std::fs::write(&path, "{\"support_titles\": []}\n").unwrap();
    let err = read_support(&path).unwrap_err().to_string();
    assert!(err.contains("s.jsonl:1") && err.contains("idx"), "{err}");
    std::fs::write(&path, "not json\n").unwrap();
    assert!(read_support(&path)
        .unwrap_err()
        .to_string()
        .contains("s.jsonl:1"));
}
