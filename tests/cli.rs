//! End-to-end checks of the `sleuth` binary on small inputs: index build + search (with a
//! query full of operator characters), rescoring a predictions file, clear errors naming
//! file and line, and `--help` covering every flag.

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

#[test]
fn help_explains_every_subcommand_flag() {
    for (sub, flags) in [
        (
            "train",
            &["--config", "--steps", "--out", "--resume", "--limit"][..],
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
                "--answer-rules",
                "--judge-url",
                "--judge-model",
                "--judge-concurrency",
                "--judge-retries",
                "--judge-cache",
            ][..],
        ),
        (
            "rollout",
            &["--config", "--question", "--samples", "--checkpoint"][..],
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
