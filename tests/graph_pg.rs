//! The passage graph (graph-RAG, DESIGN §6): entity linking, the edges and weights of a corpus
//! whose graph is known by hand, the on-disk format (round trip, truncation, corruption,
//! overwrite rules), and the graph retriever (expansion reaches a passage BM25 misses, the
//! Retriever contract, a mismatched index), plus the CLI path end to end, and that damaged
//! images of every graph container (passage graph, KG kinds, tree) are errors, never panics.

mod common;

use common::{bm25_index, ok, p, sleuth, write_corpus};
use std::path::Path;

use sleuth::corpus::Passage;
use sleuth::index::graph::{
    build_kg, build_pg, build_pg_from_path, build_tree, EmbedderKind, EntityLinker, GraphError,
    GraphKind, KgOptions, KnowledgeGraph, PassageGraph, PgOptions, TreeIndex, TreeOptions,
};
use sleuth::search::{Bm25Retriever, GraphOptions, GraphRetriever, Retriever, SearchError};

/// Entities by hand (module doc of `index::graph::pg`), df in brackets:
/// - p0: Arrowhead Stadium [1], Kansas City Chiefs [2], Andy Reid [3]
/// - p1: Kansas City Chiefs, Andy Reid
/// - p2: Andy Reid, Los Angeles [2]
/// - p3: Hollywood [2], Los Angeles
/// - p4: Zebra [1] (its title; "Zebras" is not a word-boundary match)
/// - p5: Hollywood (its title "IT" is too short for the gazetteer)
///
/// With N = 6: idf(df 2) = ln 3, idf(df 3) = ln 2, so the edges are
/// 0–1: ln 3 + ln 2 (two shared), 0–2: ln 2, 1–2: ln 2, 2–3: ln 3, 3–5: ln 3; p4 is isolated.
fn corpus() -> Vec<Passage> {
    vec![
        p(
            "p0",
            "Arrowhead Stadium",
            "Arrowhead Stadium is home of the Kansas City Chiefs, coached by Andy Reid.",
        ),
        p(
            "p1",
            "Kansas City Chiefs",
            "The Kansas City Chiefs are a football team coached by Andy Reid.",
        ),
        p("p2", "Andy Reid", "Andy Reid was born in Los Angeles."),
        p(
            "p3",
            "Hollywood",
            "Hollywood is a neighborhood of Los Angeles, California.",
        ),
        p("p4", "Zebra (animal)", "Zebras live in Africa."),
        p("p5", "IT", "IT departments in Hollywood."),
    ]
}

fn quiet() -> PgOptions {
    PgOptions {
        progress: false,
        ..PgOptions::default()
    }
}

fn close(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() < 1e-5
}

#[test]
fn linker_finds_titles_gazetteer_matches_and_capitalised_spans() {
    let c = corpus();
    let linker = EntityLinker::new(c.iter().map(|p| p.title.as_str()), 4, true);
    // "IT" is too short; "Zebra (animal)" enters as "Zebra".
    assert_eq!(linker.gazetteer_len(), 5);
    let got: Vec<Vec<String>> = c.iter().map(|p| linker.link(p)).collect();
    let want: Vec<Vec<&str>> = vec![
        vec!["Andy Reid", "Arrowhead Stadium", "Kansas City Chiefs"],
        vec!["Andy Reid", "Kansas City Chiefs"],
        vec!["Andy Reid", "Los Angeles"],
        vec!["Hollywood", "Los Angeles"],
        vec!["Zebra"],
        vec!["Hollywood"],
    ];
    assert_eq!(got, want);

    // Gazetteer matching is case-sensitive and on word boundaries only.
    let t = p("x", "", "hollywood, Hollywoodland and (Hollywood) differ");
    assert_eq!(linker.link(&t), vec!["Hollywood"]);
    // Without capitalised spans, "Los Angeles" (no passage of its own) is not an entity.
    let titles_only = EntityLinker::new(c.iter().map(|p| p.title.as_str()), 4, false);
    assert_eq!(titles_only.link(&c[2]), vec!["Andy Reid"]);
}

#[test]
fn known_corpus_gives_known_edges_and_weights() {
    let (g, stats) = build_pg(&corpus(), &quiet()).unwrap();
    let (ln2, ln3) = (2f64.ln(), 3f64.ln());
    assert_eq!(g.num_nodes(), 6);
    assert_eq!(g.num_edges(), 5);
    assert_eq!(stats.edges, 5);
    assert_eq!(stats.passages, 6);
    assert_eq!(stats.isolated, 1);
    assert_eq!(stats.entities, 6);
    assert_eq!(stats.entities_linked, 4);
    assert_eq!(stats.entities_too_common, 0);
    let n = |id: &str| g.node(id).unwrap();
    let expect = [
        ("p0", "p1", ln3 + ln2),
        ("p0", "p2", ln2),
        ("p1", "p2", ln2),
        ("p2", "p3", ln3),
        ("p3", "p5", ln3),
    ];
    for (a, b, w) in expect {
        let got = g
            .weight(n(a), n(b))
            .unwrap_or_else(|| panic!("no edge {a}-{b}"));
        assert!(close(got, w), "{a}-{b}: {got} vs {w}");
        assert_eq!(g.weight(n(b), n(a)), Some(got), "edges are symmetric");
    }
    assert_eq!(g.neighbors(n("p4")).len(), 0);
    assert_eq!(g.weight(n("p0"), n("p3")), None);
    let row: Vec<u32> = g.neighbors(n("p2")).map(|(t, _)| t).collect();
    assert_eq!(row, vec![n("p0"), n("p1"), n("p3")], "rows are sorted");
    assert_eq!(g.id(n("p3")), "p3");
    assert_eq!(g.node("nope"), None);
}

#[test]
fn tau_and_the_df_cap_prune_edges() {
    // τ = 2: only p0–p1 share two entities.
    let opts = PgOptions {
        min_shared: 2,
        ..quiet()
    };
    let (g, _) = build_pg(&corpus(), &opts).unwrap();
    assert_eq!(g.num_edges(), 1);
    let (a, b) = (g.node("p0").unwrap(), g.node("p1").unwrap());
    assert!(close(g.weight(a, b).unwrap(), 6f64.ln()));

    // max_df = 2: "Andy Reid" (3 passages) is skipped, so p0–p2 and p1–p2 vanish and p0–p1
    // keeps only the Chiefs.
    let opts = PgOptions {
        max_df: 2,
        ..quiet()
    };
    let (g, stats) = build_pg(&corpus(), &opts).unwrap();
    assert_eq!(stats.entities_too_common, 1);
    assert_eq!(g.num_edges(), 3);
    let (a, b) = (g.node("p0").unwrap(), g.node("p1").unwrap());
    assert!(close(g.weight(a, b).unwrap(), 3f64.ln()));

    for (opts, name) in [
        (
            PgOptions {
                min_shared: 0,
                ..quiet()
            },
            "min_shared",
        ),
        (
            PgOptions {
                max_df: 1,
                ..quiet()
            },
            "max_df",
        ),
    ] {
        let err = build_pg(&corpus(), &opts).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    let mut dup = corpus();
    dup.push(p("p1", "Again", "A duplicate id."));
    let err = build_pg(&dup, &quiet()).unwrap_err();
    assert!(
        matches!(err, GraphError::DuplicateId { ref id } if id == "p1"),
        "{err}"
    );
}

#[test]
fn format_round_trips_and_rejects_damage_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/pg.graph");
    let (g, _) = build_pg(&corpus(), &quiet()).unwrap();
    let bytes = g.write(&path, false).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    let back = PassageGraph::read(&path).unwrap();
    assert_eq!(back, g);
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1);

    let good = std::fs::read(&path).unwrap();
    let damaged = dir.path().join("damaged.graph");
    let check = |img: &[u8], want: &str| {
        std::fs::write(&damaged, img).unwrap();
        let err = PassageGraph::read(&damaged).unwrap_err().to_string();
        assert!(err.contains("damaged.graph") && err.contains(want), "{err}");
    };
    check(&good[..good.len() - 5], "truncated");
    check(&good[..20], "truncated");
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    check(&flipped, "checksum");
    let mut magic = good.clone();
    magic[0] = b'X';
    check(&magic, "not a sleuth graph");
    let mut version = good.clone();
    version[8] = 99;
    check(&version, "version 99");
    check(b"", "not a sleuth graph");
    let err = PassageGraph::read(&dir.path().join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent"), "{err}");
}

#[test]
fn writes_replace_only_graphs_and_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg");
    let (g, _) = build_pg(&corpus(), &quiet()).unwrap();
    g.write(&path, false).unwrap();
    let err = g.write(&path, false).unwrap_err();
    assert!(matches!(err, GraphError::Exists { .. }), "{err}");
    g.write(&path, true).unwrap();
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "keep me").unwrap();
    let err = g.write(&other, true).unwrap_err().to_string();
    assert!(err.contains("not a sleuth graph"), "{err}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
}

#[test]
fn building_from_a_file_matches_building_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = write_corpus(dir.path(), &corpus());
    let out = dir.path().join("pg");
    let stats = build_pg_from_path(&corpus_path, &out, &quiet()).unwrap();
    assert_eq!(stats.edges, 5);
    assert_eq!(stats.bytes_on_disk, std::fs::metadata(&out).unwrap().len());
    let (mem, _) = build_pg(&corpus(), &quiet()).unwrap();
    assert_eq!(PassageGraph::read(&out).unwrap(), mem);
    let err = build_pg_from_path(&corpus_path, &out, &quiet()).unwrap_err();
    assert!(matches!(err, GraphError::Exists { .. }), "{err}");
    // A malformed corpus line is reported with file and line.
    std::fs::write(
        &corpus_path,
        "{\"id\": \"a\", \"title\": \"A\", \"text\": \"x\"}\nnot json\n",
    )
    .unwrap();
    let err = build_pg_from_path(&corpus_path, &dir.path().join("pg2"), &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("corpus.jsonl:2"), "{err}");
}

#[test]
fn expansion_surfaces_a_neighbour_bm25_alone_misses() {
    let dir = tempfile::tempdir().unwrap();
    let passages = corpus();
    let index = bm25_index(dir.path(), &passages);
    let graph = dir.path().join("pg");
    build_pg(&passages, &quiet())
        .unwrap()
        .0
        .write(&graph, false)
        .unwrap();

    let query = "Arrowhead Stadium";
    let bm25 = Bm25Retriever::open(&index).unwrap();
    let plain: Vec<String> = bm25
        .search(query, 3)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(plain, vec!["p0"], "only p0 holds the query words");

    let r = GraphRetriever::open(&index, &graph).unwrap();
    let hits = r.search(query, 3).unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    // p1 is p0's strongest neighbour (ŵ = 1), p2 its weaker one (ŵ = ln 2 / ln 6).
    assert_eq!(ids, vec!["p0", "p1", "p2"]);
    let s0 = hits[0].score;
    let alpha = GraphOptions::default().alpha;
    assert!((hits[1].score - alpha * s0).abs() < 1e-4, "{hits:?}");
    let w = (2f32.ln() / 6f32.ln()) * alpha * s0;
    assert!((hits[2].score - w).abs() < 1e-4, "{hits:?}");
    assert_eq!(hits[1].title, "Kansas City Chiefs");
    assert!(hits[1].text.starts_with("The Kansas City Chiefs"));

    // α = 0 is plain BM25.
    let flat = GraphRetriever::open_with(
        &index,
        &graph,
        Default::default(),
        GraphOptions {
            alpha: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<String> = flat
        .search(query, 3)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, plain);
}

#[test]
fn graph_retriever_keeps_the_retriever_contract() {
    let dir = tempfile::tempdir().unwrap();
    let passages = corpus();
    let index = bm25_index(dir.path(), &passages);
    let graph = dir.path().join("pg");
    build_pg(&passages, &quiet())
        .unwrap()
        .0
        .write(&graph, false)
        .unwrap();
    let r = GraphRetriever::open(&index, &graph).unwrap();
    for q in [
        "",
        "?!",
        "title:foo AND (",
        "Los Angeles Hollywood",
        &"Reid ".repeat(5000),
    ] {
        for k in [0, 1, 2, 10] {
            let hits = r.search(q, k).unwrap();
            assert!(hits.len() <= k, "{q:?} k={k}");
            assert!(
                hits.windows(2).all(|w| w[0].score >= w[1].score),
                "{q:?}: {hits:?}"
            );
            assert!(hits.iter().all(|h| h.score.is_finite() && h.score > 0.0));
        }
    }
    assert!(r.search("?!", 5).unwrap().is_empty());
    let batch = r.search_batch(&["Andy Reid", "Zebras"], 2).unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0][0].id, "p2");
    let bad = GraphRetriever::open_with(
        &index,
        &graph,
        Default::default(),
        GraphOptions {
            seeds: 0,
            ..Default::default()
        },
    );
    assert!(matches!(
        bad,
        Err(SearchError::InvalidOption { name: "seeds", .. })
    ));
}

#[test]
fn a_graph_over_another_corpus_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let passages = corpus();
    let index = bm25_index(dir.path(), &passages);
    let graph = dir.path().join("pg");
    build_pg(&passages[..4], &quiet())
        .unwrap()
        .0
        .write(&graph, false)
        .unwrap();
    let err = GraphRetriever::open(&index, &graph)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not match") && err.contains("pg"),
        "{err}"
    );
    std::fs::write(&graph, b"SLEUTHGR").unwrap();
    let err = GraphRetriever::open(&index, &graph)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated") && err.contains("pg"), "{err}");
}

#[test]
fn cli_builds_a_graph_and_searches_it_through_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = write_corpus(dir.path(), &corpus());
    let index = dir.path().join("wiki");
    let graph = dir.path().join("pg");
    ok(sleuth()
        .args(["index", "build", "--corpus"])
        .arg(&corpus_path)
        .arg("--out")
        .arg(&index));
    let stats = ok(sleuth()
        .args(["index", "graph", "--kind", "pg", "--corpus"])
        .arg(&corpus_path)
        .arg("--out")
        .arg(&graph));
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(stats["edges"], 5);
    assert_eq!(stats["passages"], 6);

    let config = dir.path().join("graph.toml");
    std::fs::write(
        &config,
        format!(
            "[search]\nbackend = \"graph-pg\"\nindex = {:?}\ngraph = {:?}\n",
            index.display().to_string(),
            graph.display().to_string()
        ),
    )
    .unwrap();
    let out = ok(sleuth().args(["search", "--config"]).arg(&config).args([
        "-k",
        "3",
        "Arrowhead Stadium",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].contains("(p1)"), "{out}");

    // `eval --retrieval --config` measures the backend the config names.
    let qa = dir.path().join("qa.jsonl");
    std::fs::write(
        &qa,
        "{\"idx\": 1, \"question\": \"Which stadium is home of the Kansas City Chiefs?\", \"answer\": \"Arrowhead Stadium\"}\n",
    )
    .unwrap();
    let out = ok(sleuth()
        .args(["eval", "--retrieval", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&qa));
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["backend"], "graph-pg", "{out}");
    assert_eq!(row["report"]["questions"], 1, "{out}");
    assert_eq!(row["report"]["answer_hit"]["1"], 1.0, "{out}");
    let refused = sleuth()
        .args(["eval", "--retrieval", "--title-boost", "1", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&qa)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--title-boost"));

    // `retrieval-server --config` serves the same backend over R1-Searcher's API.
    let mut server = sleuth()
        .args(["retrieval-server", "--port", "0", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .expect("listening line")
        .to_string();
    let body = r#"{"queries": ["Which stadium is home of the Kansas City Chiefs?"], "k": 1}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /queries HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("Arrowhead Stadium"), "{reply}");
}

/// Support-title recall of the passage graph against plain BM25 on hotpotqa_500, over a few α.
/// Needs `index/wiki` and `index/pg` built over the shared corpus (docs/graph-rag.md), so it is
/// ignored by default: `cargo test --test graph_pg -- --ignored --nocapture`.
#[test]
#[ignore = "needs index/wiki and index/pg built from the shared corpus"]
fn real_corpus_recall_against_bm25() {
    use sleuth::eval::retrieval::{evaluate_retrieval, read_support, QueryRewrite};
    use sleuth::qa::read_qa;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (index, graph) = (root.join("index/wiki"), root.join("index/pg"));
    let data = root.join("../shared/data/qa/hotpotqa_500.jsonl");
    let examples = read_qa(&data).unwrap();
    let support = read_support(&data.with_extension("support.jsonl")).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = std::time::Instant::now();
    let g = PassageGraph::read(&graph).unwrap();
    println!(
        "{}",
        serde_json::json!({"graph_load_ms": t.elapsed().as_millis(), "nodes": g.num_nodes(), "edges": g.num_edges()})
    );
    let bm25 = Bm25Retriever::open(&index).unwrap();
    let base = evaluate_retrieval(&bm25, &examples, &support, QueryRewrite::None, threads).unwrap();
    println!(
        "{}",
        serde_json::json!({"retriever": "bm25", "report": base})
    );
    let mut best = 0.0;
    for alpha in [0.1f32, 0.25, 0.5, 1.0] {
        for seeds in [10, 20] {
            let r = GraphRetriever::open_with(
                &index,
                &graph,
                Default::default(),
                GraphOptions { seeds, alpha },
            )
            .unwrap();
            let rep =
                evaluate_retrieval(&r, &examples, &support, QueryRewrite::None, threads).unwrap();
            println!(
                "{}",
                serde_json::json!({"retriever": "graph-pg", "alpha": alpha, "seeds": seeds, "report": rep})
            );
            best = f64::max(best, rep.support_recall.at5);
        }
    }
    // The same at the defaults with a titles-only graph (no capitalised spans).
    let tmp = tempfile::tempdir().unwrap();
    let titles_only = tmp.path().join("pg-titles");
    let opts = PgOptions {
        capitalised_spans: false,
        ..quiet()
    };
    let stats = build_pg_from_path(
        &root.join("../shared/data/corpus/wiki_paragraphs.jsonl.gz"),
        &titles_only,
        &opts,
    )
    .unwrap();
    let r = GraphRetriever::open(&index, &titles_only).unwrap();
    let rep = evaluate_retrieval(&r, &examples, &support, QueryRewrite::None, threads).unwrap();
    println!(
        "{}",
        serde_json::json!({"retriever": "graph-pg titles only", "stats": stats, "report": rep})
    );
    assert!(best > 0.0);
}

/// Loads `image` as its container's type, then walks every accessor of what loaded, so that a
/// damaged file that passes the checks must also be safe to use. Returns whether it loaded.
fn load_and_walk(container: &str, image: &[u8], path: &Path) -> Result<(), GraphError> {
    match container {
        "pg" => {
            let g = PassageGraph::from_bytes(image, path)?;
            for node in 0..g.num_nodes() as u32 {
                let _ = g.id(node);
                for (t, _) in g.neighbors(node) {
                    assert!(g.weight(node, t).is_some());
                }
            }
        }
        "kg" => {
            let g = KnowledgeGraph::from_bytes(image, path)?;
            for node in 0..g.num_passages() as u32 {
                let _ = g.passage_id(node);
            }
            for e in 0..g.entities().len() as u32 {
                let _ = g.entity_description(e);
            }
            for r in 0..g.relations().len() {
                let _ = g.relation_description(r);
            }
            let _ = (g.entity_adjacency(), g.num_entity_pairs());
        }
        _ => {
            let t = TreeIndex::from_bytes(image, path)?;
            for level in 0..t.num_levels() {
                let _ = t.level(level);
            }
            for node in 0..t.num_nodes() as u32 {
                let _ = (t.level_of(node), t.summary(node), t.children(node));
                let _ = (t.parent(node), t.central_leaf(node), t.embedding(node));
                let _ = t.leaves_under(node);
            }
            let _ = t.nodes_per_level();
        }
    }
    Ok(())
}

/// Calls [`load_and_walk`], turning a panic into a test failure that names the damage.
fn survives(container: &str, image: &[u8], path: &Path, damage: &str) -> Result<(), GraphError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_and_walk(container, image, path)
    }))
    .unwrap_or_else(|_| panic!("{container}: loading an image {damage} panicked"))
}

#[test]
fn truncated_and_flipped_images_of_every_container_are_errors_never_panics() {
    let path = Path::new("damaged.graph");
    let (pg, _) = build_pg(&corpus(), &quiet()).unwrap();
    let kg_opts = KgOptions {
        progress: false,
        ..KgOptions::default()
    };
    let tree_opts = TreeOptions {
        embedder: EmbedderKind::Tfidf,
        cluster_size: 2,
        dims: 16,
        summary_sentences: 1,
        progress: false,
        ..TreeOptions::default()
    };
    let (tree, _) = build_tree(&corpus(), &tree_opts).unwrap();
    assert!(tree.num_levels() >= 2, "the tree has a summary level");
    // (container, image, N header counts).
    let mut images = vec![("pg", pg.to_bytes(), 3), ("tree", tree.to_bytes(), 9)];
    for kind in [GraphKind::Kg, GraphKind::Tkg, GraphKind::Rkg] {
        let (kg, _) = build_kg(&corpus(), kind, &kg_opts).unwrap();
        assert!(!kg.relations().is_empty());
        images.push(("kg", kg.to_bytes(), 13));
    }
    // The loader used by search, on a file, for a few damaged images.
    let dir = tempfile::tempdir().unwrap();
    let (_, pg_image, _) = &images[0];
    for len in [0, 7, 20, 47, pg_image.len() / 2, pg_image.len() - 1] {
        let file = dir.path().join("cut.graph");
        std::fs::write(&file, &pg_image[..len]).unwrap();
        let err = PassageGraph::read(&file).unwrap_err().to_string();
        assert!(err.contains("cut.graph"), "{err}");
    }

    for (container, image, n) in &images {
        let crc_at = 16 + 8 * n;
        let (word, body) = (crc_at + 4..crc_at + 8, crc_at + 8);
        survives(container, image, path, "intact").unwrap();
        // Every proper prefix is an error.
        for len in 0..image.len() {
            let err = survives(container, &image[..len], path, &format!("cut at {len}"));
            assert!(err.is_err(), "{container}: cut at {len} loaded");
        }
        for (at, mask) in (0..image.len()).flat_map(|at| [(at, 0x01u8), (at, 0x80), (at, 0xff)]) {
            let mut bad = image.clone();
            bad[at] ^= mask;
            let damage = format!("with byte {at} ^ {mask:#04x}");
            let loaded = survives(container, &bad, path, &damage);
            // Only the reserved word of the passage and knowledge graphs goes unread (the
            // tree's is its embedder code).
            if !(word.contains(&at) && *container != "tree") {
                assert!(loaded.is_err(), "{container}: {damage} loaded");
            }
            // The same flip in the body under a matching CRC reaches the structural checks:
            // it may load (a flipped weight is still a weight), but must not panic.
            if at >= body {
                let crc = crc32fast::hash(&bad[body..]).to_le_bytes();
                bad[crc_at..crc_at + 4].copy_from_slice(&crc);
                let _ = survives(container, &bad, path, &format!("{damage}, CRC fixed"));
            }
        }
    }
}
