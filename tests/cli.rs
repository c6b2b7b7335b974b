//! End-to-end checks of the `sleuth` binary on small inputs: index build + search (with a
//! query full of operator characters), rescoring a predictions file, comparing two
//! evaluations question by question, clear errors naming file and line, and `--help` covering
//! every flag.

use std::io::Write;
use std::process::Command;

fn sleuth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sleuth"))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run sleuth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn index_build_then_search_prints_ranked_passages() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    std::fs::write(
        &corpus,
        concat!(
            r#"{"id": "1", "title": "Arrowhead Stadium", "text": "Arrowhead Stadium is in the Truman Sports Complex in Kansas City."}"#,
            "\n",
            r#"{"id": "2", "title": "Kauffman Stadium", "text": "Kauffman Stadium is a baseball park, home of the Kansas City Royals."}"#,
            "\n",
            r#"{"id": "3", "title": "Paris", "text": "Paris is the capital of France."}"#,
            "\n"
        ),
    )
    .unwrap();
    let index = dir.path().join("idx");
    let (ok, out, err) = run(sleuth()
        .args(["index", "build", "--corpus"])
        .arg(&corpus)
        .arg("--out")
        .arg(&index));
    assert!(ok, "{err}");
    assert!(out.contains("\"passages\":3"), "{out}");

    let (ok, out, err) = run(sleuth().arg("search").arg("--index").arg(&index).args([
        "-k",
        "2",
        "Truman Sports Complex",
    ]));
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "only one passage mentions the query terms: {out}"
    );
    assert!(lines[0].contains("\"Arrowhead Stadium\""), "{out}");

    let (ok, out, err) = run(sleuth().arg("search").arg("--index").arg(&index).args([
        "-k",
        "5",
        "title:(\"Kansas AND City\" OR [Royals^2 -",
    ]));
    assert!(ok, "operator characters must search, not fail: {err}");
    assert!(out.contains("Kauffman"), "{out}");
}

#[test]
fn malformed_corpus_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("bad.jsonl");
    std::fs::write(
        &corpus,
        "{\"id\": \"1\", \"title\": \"A\", \"text\": \"ok\"}\n{not json\n",
    )
    .unwrap();
    let (ok, _, err) = run(sleuth()
        .args(["index", "build", "--corpus"])
        .arg(&corpus)
        .arg("--out")
        .arg(dir.path().join("i")));
    assert!(!ok);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert!(
        !dir.path().join("i").exists(),
        "a failed build leaves no index behind"
    );
}

#[test]
fn rescore_prints_percentages() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        r#"{{"pred_ans": "Arrowhead Stadium", "answer": "Arrowhead Stadium"}}"#
    )
    .unwrap();
    writeln!(f, r#"{{"pred_ans": "the Arrowhead Stadium in Missouri", "answer": ["Arrowhead Stadium", "Arrowhead"]}}"#).unwrap();
    writeln!(f, r#"{{"pred_ans": "Paris", "answer": "London"}}"#).unwrap();
    writeln!(f, r#"{{"pred_ans": "yes", "answer": "no"}}"#).unwrap();
    let (ok, out, err) = run(sleuth().args(["eval", "--rescore"]).arg(f.path()));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["n"], 4);
    assert_eq!(v["em"], 25.0);
    assert_eq!(v["cover_em"], 50.0);
    // F1: 1, 2·(2/4·2/2)/(2/4+2/2) = 0.6667, 0, 0 → 41.7
    assert_eq!(v["f1"], 41.7);

    writeln!(f, r#"{{"pred_ans": "x"}}"#).unwrap();
    let (ok, _, err) = run(sleuth().args(["eval", "--rescore"]).arg(f.path()));
    assert!(!ok);
    assert!(err.contains(":5:") && err.contains("answer"), "{err}");
}

/// Twenty questions, idx 0..20, gold `ansN`. Model A is right (exactly) on 0..10; model B is
/// right exactly on 3..10 and only cover-EM right ("it is ansN") on 10..17, and has one more
/// question A lacks (idx 99). So on cover-EM B gains 7 and loses 3; on EM it gains none and
/// loses 3. The stored `em` is wrong on purpose: `--compare` rescores the predictions.
fn write_two_evaluations(a: &std::path::Path, b: &std::path::Path) {
    let row = |i: usize, pred: &str| {
        format!(
            r#"{{"idx": {i}, "question": "Question {i}?", "answer": ["ans{i}"], "pred_ans": "{pred}", "em": 0.0, "solution": "…"}}"#
        ) + "\n"
    };
    let text_a: String = (0..20)
        .map(|i| {
            row(
                i,
                &if i < 10 {
                    format!("ans{i}")
                } else {
                    "wrong".into()
                },
            )
        })
        .collect();
    let text_b: String = (0..20)
        .map(|i| {
            let pred = match i {
                3..=9 => format!("ans{i}"),
                10..=16 => format!("it is ans{i}"),
                _ => "wrong".into(),
            };
            row(i, &pred)
        })
        .chain([row(99, "ans99")])
        .collect();
    std::fs::write(a, text_a).unwrap();
    std::fs::write(b, text_b).unwrap();
}

#[test]
fn compare_pairs_two_evaluations_and_tests_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    write_two_evaluations(&a, &b);

    let (ok, out, err) = run(sleuth().args(["eval", "--compare"]).arg(&a).arg(&b));
    assert!(ok, "{err}");
    assert!(
        out.contains("20 questions paired by idx (0 only in A, 1 only in B: not counted)"),
        "{out}"
    );
    // cover-EM 50% and 70% of 20: SE sqrt(.25/20) = 11.2 and sqrt(.21/20) = 10.2 points;
    // McNemar(7, 3) = 2 · (1 + 10 + 45 + 120) / 2^10 = 0.34375.
    assert!(
        out.contains("| cover-EM | 50.0 ± 11.2 | 70.0 ± 10.2 | +20.0 | 7 | 3 | 0.34 |"),
        "{out}"
    );
    // EM 50% and 35%: McNemar(0, 3) = 2 / 8.
    assert!(
        out.contains("| EM | 50.0 ± 11.2 | 35.0 ± 10.7 | -15.0 | 0 | 3 | 0.25 |"),
        "{out}"
    );
    assert!(out.contains("| F1 (mean) | 50.0 ± 11.2 |"), "{out}");

    let (ok, out, err) = run(sleuth()
        .args(["eval", "--json", "--compare"])
        .arg(&a)
        .arg(&b));
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["n"], 20);
    assert_eq!(v["paired_by"], "idx");
    assert_eq!(
        (v["only_a"].as_u64(), v["only_b"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(v["cover_em"]["gained"], 7);
    assert_eq!(v["cover_em"]["lost"], 3);
    let p = v["cover_em"]["p_value"].as_f64().unwrap();
    assert!((p - 0.34375).abs() < 1e-12, "{p}");
    assert_eq!(v["em"]["a"], 50.0);
    assert_eq!(v["em"]["b"], 35.0);
    assert!(
        err.contains("| cover-EM |"),
        "the table goes to stderr: {err}"
    );

    // Two eval phase folders: like-named files pair, a set in one folder only is named.
    let (pa, pb) = (dir.path().join("01-before"), dir.path().join("02-after"));
    std::fs::create_dir_all(&pa).unwrap();
    std::fs::create_dir_all(&pb).unwrap();
    let set = "eval-hotpotqa_500.trajectories.jsonl";
    write_two_evaluations(&pa.join(set), &pb.join(set));
    std::fs::write(pa.join("eval-2wiki_500.trajectories.jsonl"), "").unwrap();
    let (ok, out, err) = run(sleuth().args(["eval", "--compare"]).arg(&pa).arg(&pb));
    assert!(ok, "{err}");
    assert!(out.starts_with("## hotpotqa_500"), "{out}");
    assert!(out.contains("| 7 | 3 | 0.34 |"), "{out}");
    assert!(
        err.contains("eval-2wiki_500.trajectories.jsonl") && err.contains("not compared"),
        "{err}"
    );

    // One idx naming two different questions: not the same eval set.
    std::fs::write(
        &b,
        r#"{"idx": 0, "question": "Another question?", "answer": "x", "pred_ans": "x"}"#,
    )
    .unwrap();
    let (ok, _, err) = run(sleuth().args(["eval", "--compare"]).arg(&a).arg(&b));
    assert!(!ok);
    assert!(err.contains("not the same eval set"), "{err}");

    // A malformed row names the file and line; a model or an index is never needed.
    std::fs::write(&b, "{\"question\": \"q\", \"answer\": \"x\"}\n{oops\n").unwrap();
    let (ok, _, err) = run(sleuth().args(["eval", "--compare"]).arg(&a).arg(&b));
    assert!(!ok);
    assert!(err.contains("b.jsonl:2"), "{err}");
}

#[test]
fn help_explains_every_subcommand_flag() {
    for (sub, flags) in [
        (
            "train",
            &[
                "--config", "--steps", "--out", "--resume", "--limit", "--lora",
            ][..],
        ),
        (
            "eval",
            &[
                "--rescore",
                "--config",
                "--data",
                "--limit",
                "--out",
                "--checkpoint",
                "--lora",
                "--answer-rules",
                "--compare",
                "--json",
                "--judge-url",
                "--judge-model",
                "--judge-concurrency",
                "--judge-retries",
                "--judge-cache",
            ][..],
        ),
        (
            "rollout",
            &[
                "--config",
                "--question",
                "--samples",
                "--checkpoint",
                "--lora",
            ][..],
        ),
        (
            "generate",
            &[
                "--prompt",
                "--max-new-tokens",
                "--temperature",
                "--top-p",
                "--stop",
                "--seed",
            ][..],
        ),
        ("search", &["--index", "--config", "-k"][..]),
    ] {
        let (ok, out, _) = run(sleuth().args([sub, "--help"]));
        assert!(ok);
        for flag in flags {
            assert!(
                out.contains(flag),
                "`sleuth {sub} --help` lacks {flag}:\n{out}"
            );
        }
    }
}

#[test]
fn missing_config_is_a_clear_error() {
    let (ok, _, err) = run(sleuth().args([
        "train",
        "--config",
        "nope.toml",
        "--steps",
        "1",
        "--out",
        "/tmp/sleuth-none",
    ]));
    assert!(!ok);
    assert!(err.contains("nope.toml"), "{err}");
}
