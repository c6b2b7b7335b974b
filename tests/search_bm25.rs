//! The BM25 retriever: ranking, the Retriever contract (k, order, any query string is valid),
//! opening errors, and a check on the real corpus.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sleuth::corpus::{Passage, PassageReader};
use sleuth::index::{build_bm25, IndexOptions};
use sleuth::search::{Bm25Options, Bm25Retriever, Hit, Retriever, SearchError};

fn p(id: &str, title: &str, text: &str) -> Passage {
    Passage {
        id: id.into(),
        title: title.into(),
        text: text.into(),
    }
}

fn passages() -> Vec<Passage> {
    vec![
        p("arrowhead", "Arrowhead Stadium", "Arrowhead Stadium is a football stadium in Kansas City, Missouri, home of the Kansas City Chiefs. It is part of the Truman Sports Complex."),
        p("kauffman", "Kauffman Stadium", "Kauffman Stadium is a baseball park in Kansas City, Missouri, home of the Kansas City Royals. It is also part of the Truman Sports Complex."),
        p("truman", "Harry S. Truman", "Harry S. Truman was the 33rd president of the United States, from 1945 to 1953."),
        p("umkc", "University of Missouri–Kansas City", "The University of Missouri–Kansas City is a public research university in Kansas City, Missouri."),
        p("wembley", "Wembley Stadium", "Wembley Stadium is a football stadium in Wembley, London. It opened in 2007."),
        p("paris", "Paris", "Paris is the capital and most populous city of France."),
        p("zurich", "Zürich", "Zürich is the largest city in Switzerland. Ünïcödé names like Zürich are common."),
        p("cpp", "C++", "C++ is a general-purpose programming language created by Bjarne Stroustrup."),
        p("and-or", "Boolean logic", "In Boolean logic the operators AND, OR and NOT combine truth values."),
        p("empty-title", "", "A passage without a title, about the quick brown fox."),
    ]
}

fn build(passages: Vec<Passage>, dir: &Path) {
    let opts = IndexOptions {
        progress: false,
        ..IndexOptions::default()
    };
    build_bm25(passages.into_iter().map(Ok), dir, &opts).unwrap();
}

fn fixture() -> (tempfile::TempDir, Bm25Retriever) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    build(passages(), &dir);
    (tmp, Bm25Retriever::open(&dir).unwrap())
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

fn assert_contract(hits: &[Hit], k: usize, query: &str) {
    assert!(hits.len() <= k, "{query:?}: {} hits > k={k}", hits.len());
    for h in hits {
        assert!(
            h.score.is_finite() && h.score > 0.0,
            "{query:?}: score {}",
            h.score
        );
    }
    for w in hits.windows(2) {
        assert!(w[0].score >= w[1].score, "{query:?}: scores not descending");
    }
}

#[test]
fn passage_sharing_rare_terms_ranks_first() {
    let (_tmp, r) = fixture();
    let cases = [
        ("Who created the C++ programming language?", "cpp"),
        ("Royals baseball park", "kauffman"),
        ("Chiefs football", "arrowhead"),
        ("33rd president", "truman"),
        ("London 2007 stadium", "wembley"),
        ("capital of France", "paris"),
        ("zürich switzerland", "zurich"),
    ];
    for (query, want) in cases {
        let hits = r.search(query, 5).unwrap();
        assert_eq!(
            hits.first().map(|h| h.id.as_str()),
            Some(want),
            "{query}: {:?}",
            ids(&hits)
        );
        assert_contract(&hits, 5, query);
    }
}

#[test]
fn k_is_respected_and_scores_descend() {
    let (_tmp, r) = fixture();
    // "kansas" and "stadium" match four passages, "city" two more.
    let all = r.search("Kansas City stadium", usize::MAX).unwrap();
    assert_eq!(all.len(), 6, "{:?}", ids(&all));
    for k in [1, 2, 3, 5, 6, 7, 100, usize::MAX] {
        let hits = r.search("Kansas City stadium", k).unwrap();
        assert_eq!(hits.len(), k.min(6), "k={k}: {:?}", ids(&hits));
        assert_eq!(ids(&hits), ids(&all[..hits.len()]), "k={k}");
        assert_contract(&hits, k, "Kansas City stadium");
    }
    assert!(r.search("Kansas City stadium", 0).unwrap().is_empty());
}

#[test]
fn hits_carry_stored_fields_and_render_for_the_policy() {
    let (_tmp, r) = fixture();
    let hit = &r.search("Bjarne Stroustrup", 1).unwrap()[0];
    assert_eq!(hit.id, "cpp");
    assert_eq!(hit.title, "C++");
    assert_eq!(
        hit.render(),
        "\"C++\" C++ is a general-purpose programming language created by Bjarne Stroustrup."
    );
}

#[test]
fn queries_without_tokens_find_nothing() {
    let (_tmp, r) = fixture();
    for q in [
        "",
        "   ",
        "\t\n",
        "!!! ??? ...",
        "\"\"",
        "()[]{}",
        "---",
        "*",
        "~^+:",
    ] {
        assert!(r.search(q, 5).unwrap().is_empty(), "{q:?}");
    }
    assert!(r.search("xylophonequartz", 5).unwrap().is_empty());
}

fn nasty_queries() -> Vec<String> {
    let mut qs: Vec<String> = [
        "",
        " ",
        "\"",
        "\"unbalanced quote",
        "\"Arrowhead Stadium\"",
        "title:Arrowhead",
        "text:football",
        "id:paris",
        "nosuchfield:value",
        ":",
        "::::",
        "a:b:c",
        "Kansas AND City",
        "football OR baseball",
        "NOT Paris",
        "AND",
        "OR OR OR",
        "+Kansas -City",
        "-",
        "+",
        "stad*",
        "*",
        "Pari~2",
        "stadium^10",
        "^",
        "(Kansas City",
        "Kansas City)",
        "[1945 TO 1953",
        "{1945 TO *}",
        "((((((((((",
        "]]]]",
        "back\\slash \\",
        "\\",
        "a\\:b",
        "Zürich Ünïcödé",
        "東京 スタジアム",
        "🏈 stadium 🎉",
        "ﬁnance — “smart quotes” ‘x’",
        "\u{0}\u{1}\u{7f} control \u{200b}zero-width",
        "IN [a b]",
        "field:\"phrase query\"~3^2",
        "/regex.*/",
        "$ % & @ # ; ' < > = |",
        "Harry S. Truman 33rd president 1945-1953 (United States)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    qs.push("stadium ".repeat(1_250)); // 10,000 chars, one distinct term
    qs.push((0..2_000).map(|i| format!("w{i} ")).collect()); // ~10,000 chars, many terms
    qs.push("x".repeat(10_000)); // one 10,000-char token (dropped as too long)
    qs.push("é".repeat(5_000)); // multi-byte, 10,000 bytes
    qs.push("(\"".repeat(5_000));
    qs
}

#[test]
fn any_query_string_searches_without_error() {
    let (_tmp, r) = fixture();
    let queries = nasty_queries();
    assert!(queries.len() >= 40);
    for q in &queries {
        for k in [1, 5] {
            match r.search(q, k) {
                Ok(hits) => assert_contract(&hits, k, q),
                Err(e) => panic!("query {:?} failed: {e}", &q[..q.len().min(60)]),
            }
        }
    }
    let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    assert_eq!(r.search_batch(&refs, 3).unwrap().len(), queries.len());
}

#[test]
fn operator_words_are_plain_words() {
    let (_tmp, r) = fixture();
    // With query syntax "NOT Paris" would exclude Paris; here it is two words.
    assert_eq!(r.search("NOT Paris", 1).unwrap()[0].id, "paris");
    // "title:Arrowhead" is the words "title" and "arrowhead": the two passages holding one
    // each come first (a field query would find only the Arrowhead title).
    let mut top2 = ids(&r.search("title:Arrowhead", 2).unwrap())
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    top2.sort();
    assert_eq!(top2, vec!["arrowhead", "empty-title"]);
    // The passage about the operators themselves is found by them.
    assert_eq!(r.search("AND OR NOT", 1).unwrap()[0].id, "and-or");
}

#[test]
fn title_boost_favours_title_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    build(
        vec![
            p(
                "in-title",
                "Mercury",
                "A planet close to the sun, small and hot, with no moons at all.",
            ),
            p(
                "in-text",
                "Freddie",
                "Mercury was the stage name of a singer; mercury is also a metal.",
            ),
        ],
        &dir,
    );
    let plain = Bm25Retriever::open(&dir).unwrap();
    assert_eq!(plain.search("mercury", 2).unwrap()[0].id, "in-text");
    let boosted = Bm25Retriever::open_with(
        &dir,
        Bm25Options {
            title_boost: 5.0,
            ..Bm25Options::default()
        },
    )
    .unwrap();
    assert_eq!(boosted.search("mercury", 2).unwrap()[0].id, "in-title");
    let no_titles = Bm25Retriever::open_with(
        &dir,
        Bm25Options {
            title_boost: 0.0,
            ..Bm25Options::default()
        },
    )
    .unwrap();
    assert_eq!(
        ids(&no_titles.search("freddie", 2).unwrap()),
        Vec::<&str>::new()
    );
}

#[test]
fn invalid_options_are_rejected() {
    let (tmp, _r) = fixture();
    let dir = tmp.path().join("idx");
    for opts in [
        Bm25Options {
            title_boost: -1.0,
            ..Default::default()
        },
        Bm25Options {
            title_boost: f32::NAN,
            ..Default::default()
        },
        Bm25Options {
            max_query_terms: 0,
            ..Default::default()
        },
    ] {
        let err = Bm25Retriever::open_with(&dir, opts).unwrap_err();
        assert!(matches!(err, SearchError::InvalidOption { .. }), "{err}");
    }
}

#[test]
fn query_terms_are_capped() {
    let (tmp, _r) = fixture();
    let dir = tmp.path().join("idx");
    let r = Bm25Retriever::open_with(
        &dir,
        Bm25Options {
            max_query_terms: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // Only "lorem" and "ipsum" are searched; "paris" comes third and is dropped.
    assert!(r.search("lorem ipsum paris", 5).unwrap().is_empty());
    assert_eq!(r.search("paris lorem ipsum", 5).unwrap()[0].id, "paris");
    // Repeats count once, so "paris" is the second distinct term here.
    assert_eq!(
        r.search("lorem lorem lorem paris", 5).unwrap()[0].id,
        "paris"
    );
    assert_eq!(
        r.search("paris paris paris france", 1).unwrap()[0].id,
        "paris"
    );
}

#[test]
fn get_by_id() {
    let (_tmp, r) = fixture();
    assert_eq!(r.get("paris").unwrap().unwrap().title, "Paris");
    assert_eq!(r.get("nope").unwrap(), None);
    assert_eq!(r.num_passages(), 10);
    assert_eq!(r.manifest().unwrap().passages, 10);
}

#[test]
fn one_retriever_serves_many_threads_through_the_trait() {
    let (_tmp, r) = fixture();
    let shared: Arc<dyn Retriever> = Arc::new(r);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let r = Arc::clone(&shared);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let q = if i % 2 == 0 {
                        "Royals baseball"
                    } else {
                        "capital of France"
                    };
                    let hits = r.search(q, 3).unwrap();
                    assert_eq!(hits[0].id, if i % 2 == 0 { "kauffman" } else { "paris" });
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn opening_a_non_index_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    for path in [&missing, &empty, &file] {
        let err = Bm25Retriever::open(path).unwrap_err();
        assert!(matches!(err, SearchError::NotAnIndex { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn opening_a_corrupt_index_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // Garbage metadata.
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("meta.json"), "{ not json").unwrap();
    // Valid metadata, segment files deleted.
    let gutted = tmp.path().join("gutted");
    build(passages(), &gutted);
    for entry in std::fs::read_dir(&gutted).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".idx") || name.ends_with(".store") || name.ends_with(".term") {
            std::fs::remove_file(path).unwrap();
        }
    }
    // Manifest from the future.
    let future = tmp.path().join("future");
    build(passages(), &future);
    std::fs::write(
        future.join("sleuth-index.json"),
        r#"{"format_version": 99}"#,
    )
    .unwrap();
    for path in [&garbage, &gutted, &future] {
        let err = Bm25Retriever::open(path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

/// `CARGO_MANIFEST_DIR/../shared/data`, where the project's real data lives.
fn shared_corpus() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/corpus/wiki_paragraphs.jsonl.gz");
    path.is_file().then_some(path)
}

/// Indexes the whole 55,640-passage corpus (a few seconds, dev profile) and checks that a
/// multi-hop style query reaches the passages R1-Searcher retrieved for it.
#[test]
fn real_corpus_finds_the_truman_sports_complex() {
    let Some(corpus) = shared_corpus() else {
        eprintln!("skipping: shared corpus not found");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wiki");
    let start = Instant::now();
    let opts = IndexOptions {
        progress: false,
        ..IndexOptions::default()
    };
    let stats = sleuth::index::build_bm25_from_path(&corpus, &dir, &opts).unwrap();
    eprintln!(
        "indexed {} passages in {:.2} s ({} bytes)",
        stats.passages,
        start.elapsed().as_secs_f64(),
        stats.bytes_on_disk
    );
    assert_eq!(stats.passages, 55_640);

    let r = Bm25Retriever::open(&dir).unwrap();
    assert_eq!(r.num_passages(), 55_640);
    let hits = r.search("Truman Sports Complex stadium", 5).unwrap();
    assert_contract(&hits, 5, "Truman Sports Complex stadium");
    assert_eq!(hits.len(), 5);
    let top3: Vec<&str> = hits[..3].iter().map(|h| h.title.as_str()).collect();
    assert!(top3.contains(&"Truman Sports Complex"), "{top3:?}");
    for hit in &hits[..3] {
        let s = format!("{} {}", hit.title, hit.text);
        assert!(
            ["Arrowhead", "Kauffman", "Truman Sports Complex"]
                .iter()
                .any(|w| s.contains(w)),
            "{s}"
        );
    }
    let hits = r
        .search("Which baseball park is home to the Kansas City Royals?", 3)
        .unwrap();
    assert!(
        hits.iter().any(|h| h.title == "Kauffman Stadium"),
        "{:?}",
        ids(&hits)
    );

    // The manifest records where the passages came from.
    assert_eq!(
        r.manifest().unwrap().corpus_path.as_deref(),
        Some(corpus.as_path())
    );
    // And the reader agrees with the index on the first row.
    let first = PassageReader::open(&corpus)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(r.get(&first.id).unwrap(), Some(first));
}

/// Which of several equal-scoring passages make the top-k does not depend on the order the
/// index stored them in: ties are settled by passage id, across the cut too (a multi-threaded
/// build stores documents in a different order each time, and two main-job runs diverged on
/// it). Two indexes of the same passages added in opposite orders give the same hits.
#[test]
fn ties_at_the_cut_go_to_the_smallest_ids_whatever_the_index_order() {
    let mut docs = vec![p(
        "best",
        "Heart of Midlothian",
        "Hearts competed in the Southern League and the Southern League Cup.",
    )];
    for season in ["c-1944", "a-1942", "e-1946", "b-1943", "d-1945"] {
        docs.push(p(
            season,
            "Heart of Midlothian season",
            "During the season Hearts competed in the Southern League.",
        ));
    }
    docs.extend(passages());
    let mut reversed = docs.clone();
    reversed.reverse();
    let ids = |docs: Vec<Passage>, k: usize| -> Vec<String> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("idx");
        build(docs, &dir);
        Bm25Retriever::open(&dir)
            .unwrap()
            .search("Hearts Southern League season", k)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect()
    };
    for k in [2, 3, 4] {
        let (a, b) = (ids(docs.clone(), k), ids(reversed.clone(), k));
        assert_eq!(a, b, "k = {k}");
        assert_eq!(a.len(), k);
    }
    // The five seasons tie above the club's own passage; k = 3 keeps the three smallest ids.
    assert_eq!(ids(reversed, 3), ["a-1942", "b-1943", "c-1944"]);
}
