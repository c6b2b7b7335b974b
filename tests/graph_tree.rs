//! The RAPTOR tree (graph-RAG, DESIGN §6): k-means and bisecting clustering on hand-computed
//! cases, the levels, clusters, parents, children and extractive summaries of corpora whose
//! clustering is known (separate topics with disjoint words), the on-disk format (round trip,
//! truncation, corruption, wrong magic, version and kind), the collapsed-tree retriever
//! (summary hits, their expansion, fusion, the Retriever contract, a mismatched index or kind),
//! and the CLI path end to end.

mod common;

use common::{bm25_index, ok, p, sleuth, write_corpus};
use std::path::Path;

use sleuth::config::SearchSection;
use sleuth::corpus::Passage;
use sleuth::index::graph::{
    bisecting_clusters, build_pg, build_tree, build_tree_from_path, hashed_feature, kmeans,
    Embedder, EmbedderKind, GraphError, PgOptions, TfidfEmbedder, TreeIndex, TreeOptions,
};
use sleuth::search::{Retriever, SearchError, TreeRetriever, TreeSearchOptions};

/// Cats and rockets ([`common::cats_and_rockets`]).
fn corpus() -> Vec<Passage> {
    common::cats_and_rockets()
}

/// TF-IDF embedder, cluster size 3, one summary sentence, enough dimensions that the few terms
/// do not collide.
fn opts() -> TreeOptions {
    TreeOptions {
        embedder: EmbedderKind::Tfidf,
        cluster_size: 3,
        dims: 1024,
        summary_sentences: 1,
        progress: false,
        ..TreeOptions::default()
    }
}

#[test]
fn kmeans_matches_a_hand_computed_case() {
    // Mean (5.5, 0): points 0 and 3 are both 5.5 away, so the first centroid is point 0 (lowest
    // index); the point farthest from it is 3. Assignment {0, 1} {2, 3}; means (0.5, 0) and
    // (10.5, 0); the second pass changes nothing.
    let pts: Vec<Vec<f32>> = vec![
        vec![0.0, 0.0],
        vec![1.0, 0.0],
        vec![10.0, 0.0],
        vec![11.0, 0.0],
    ];
    let refs: Vec<&[f32]> = pts.iter().map(Vec::as_slice).collect();
    let km = kmeans(&refs, 2, 10);
    assert_eq!(km.assignment, vec![0, 0, 1, 1]);
    assert_eq!(km.centroids, vec![vec![0.5, 0.0], vec![10.5, 0.0]]);
    assert_eq!(km.iterations, 2);
    // The iteration cap stops after the first assignment: centroids moved once.
    let one = kmeans(&refs, 2, 1);
    assert_eq!(one.iterations, 1);
    assert_eq!(one.centroids, vec![vec![0.5, 0.0], vec![10.5, 0.0]]);
    // k = 1 is the mean; k above the point count is capped; no points, no centroids.
    assert_eq!(kmeans(&refs, 1, 10).centroids, vec![vec![5.5, 0.0]]);
    assert_eq!(kmeans(&refs, 9, 10).centroids.len(), 4);
    assert!(kmeans(&[], 2, 10).centroids.is_empty());
    // A three-way case: (0,0) (0,1) | (5,5) (5,6) | (10,0). Mean (4, 2.4): (10,0) is farthest;
    // then (0,0) (100 away), then (5,6) (min distance 37 vs (0,1)'s 26).
    let pts: Vec<Vec<f32>> = vec![
        vec![0.0, 0.0],
        vec![0.0, 1.0],
        vec![5.0, 5.0],
        vec![5.0, 6.0],
        vec![10.0, 0.0],
    ];
    let refs: Vec<&[f32]> = pts.iter().map(Vec::as_slice).collect();
    let km = kmeans(&refs, 3, 10);
    assert_eq!(km.assignment, vec![1, 1, 2, 2, 0]);
    assert_eq!(
        km.centroids,
        vec![vec![10.0, 0.0], vec![0.0, 0.5], vec![5.0, 5.5]]
    );
}

#[test]
fn bisection_splits_to_the_cluster_size_and_balances_outliers() {
    let line: Vec<Vec<f32>> = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
        .iter()
        .map(|&x| vec![x])
        .collect();
    let refs: Vec<&[f32]> = line.iter().map(Vec::as_slice).collect();
    assert_eq!(
        bisecting_clusters(&refs, 3, 10),
        vec![vec![0, 1, 2], vec![3, 4, 5]]
    );
    assert_eq!(
        bisecting_clusters(&refs, 6, 10),
        vec![vec![0, 1, 2, 3, 4, 5]]
    );
    // Ten points 0, 0.1, …, 0.9 and an outlier at 100 (index 10), clusters of at most 5:
    // 2-means cuts off the outlier alone (1 of 11, under a tenth), so the set is cut at the
    // median of the projection on the line from the first centroid (the outlier) to the second
    // instead: the 5 nearest the outlier end (0.6 … 0.9 and 100) | the 6 others. Those 6 split
    // evenly by 2-means: 0 … 0.2 | 0.3 … 0.5.
    let pts: Vec<Vec<f32>> = (0..10)
        .map(|i| vec![i as f32 * 0.1])
        .chain([vec![100.0]])
        .collect();
    let refs: Vec<&[f32]> = pts.iter().map(Vec::as_slice).collect();
    assert_eq!(
        bisecting_clusters(&refs, 5, 10),
        vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8, 9, 10]]
    );
}

#[test]
fn tfidf_embedder_hashes_weighted_terms_to_unit_vectors() {
    let e = TfidfEmbedder::fit(["alpha beta", "alpha gamma", "delta"], 64);
    // idf = ln((3 + 1) / (df + 1)) + 1
    let idf = |df: f32| (4.0 / (df + 1.0)).ln() + 1.0;
    assert!((e.idf("alpha").unwrap() - idf(2.0)).abs() < 1e-6);
    assert!((e.idf("beta").unwrap() - idf(1.0)).abs() < 1e-6);
    assert_eq!(e.idf("the"), None, "stop words are not terms");
    let v = e.embed("alpha alpha unknown");
    let (d, sign) = hashed_feature("alpha", 64);
    assert!(
        (v[d] - sign).abs() < 1e-6,
        "one known term: ±1 on its dimension"
    );
    assert_eq!(v.iter().filter(|x| **x != 0.0).count(), 1);
    let w = e.embed("alpha beta");
    let norm: f32 = w.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(e.embed("nothing known here").iter().all(|x| *x == 0.0));
}

#[test]
fn two_topics_make_two_summaries_of_their_central_sentences() {
    let (tree, stats) = build_tree(&corpus(), &opts()).unwrap();
    assert_eq!(tree.nodes_per_level(), vec![6, 2]);
    assert_eq!(stats.nodes_per_level, vec![6, 2]);
    assert_eq!((stats.levels, stats.summary_nodes), (2, 2));
    assert_eq!(tree.num_levels(), 2);
    assert_eq!(tree.level(1), 6..8);
    // Clusters ordered by their first member: cats, then rockets.
    assert_eq!(tree.children(6), &[0, 1, 2]);
    assert_eq!(tree.children(7), &[3, 4, 5]);
    for u in 0..3 {
        assert_eq!(tree.parent(u), Some(6));
        assert_eq!(tree.parent(u + 3), Some(7));
    }
    assert_eq!((tree.parent(6), tree.parent(7)), (None, None));
    assert_eq!(tree.level_of(4), 0);
    assert_eq!(tree.level_of(7), 1);
    assert!(tree.children(0).is_empty() && tree.summary(0).is_none());
    assert_eq!(tree.leaves_under(7), vec![3, 4, 5]);
    // The sentences nearest each centroid are the ones in the topic's shared words; the
    // off-topic ones (Grandma, Pirates, …) hold words of one passage only. Among the rockets
    // sentences, "launch" also weighs in t5's title, so the centroid leans to it.
    assert_eq!(tree.summary(6), Some("House cats purr softly."));
    assert_eq!(tree.summary(7), Some("Rockets reach orbit after launch."));
    assert_eq!(tree.passage_id(tree.central_leaf(6)), "t0");
    assert_eq!(tree.passage_id(tree.central_leaf(7)), "t3");
    // Two sentences, the cap of 80 words: both in source order.
    let two = TreeOptions {
        summary_sentences: 2,
        ..opts()
    };
    let (tree2, _) = build_tree(&corpus(), &two).unwrap();
    assert_eq!(
        tree2.summary(6),
        Some("Cats purr softly. House cats purr softly.")
    );
    // A word cap of 4 keeps only the best sentence (always taken) plus nothing longer.
    let capped = TreeOptions {
        summary_sentences: 3,
        summary_words: 4,
        ..opts()
    };
    let (tree3, _) = build_tree(&corpus(), &capped).unwrap();
    assert_eq!(tree3.summary(6), Some("House cats purr softly."));
    // A corpus no larger than the cluster size is leaves only.
    let small = TreeOptions {
        cluster_size: 6,
        ..opts()
    };
    let (leaves, stats) = build_tree(&corpus(), &small).unwrap();
    assert_eq!(
        (leaves.num_levels(), stats.nodes_per_level.clone()),
        (1, vec![6])
    );
}

/// Four topics of three passages: level 1 has a summary per topic, level 2 joins them in two.
fn four_topics() -> Vec<Passage> {
    let topics = [
        ("cats", "purr softly"),
        ("rockets", "reach orbit"),
        ("violins", "play melodies"),
        ("glaciers", "carve valleys"),
    ];
    let mut out = Vec::new();
    for (t, (noun, verb)) in topics.iter().enumerate() {
        for j in 0..3 {
            out.push(p(
                &format!("q{t}{j}"),
                &format!("{noun} {j}"),
                &format!("Many {noun} {verb}. Item{t}x{j} is unique."),
            ));
        }
    }
    out
}

#[test]
fn levels_stack_until_a_level_fits_one_cluster_or_the_cap() {
    let (tree, stats) = build_tree(&four_topics(), &opts()).unwrap();
    assert_eq!(stats.nodes_per_level, vec![12, 4, 2]);
    for (i, u) in tree.level(1).enumerate() {
        let first = 3 * i as u32;
        assert_eq!(tree.children(u), &[first, first + 1, first + 2]);
    }
    // Every level-1 node has one level-2 parent; the level-2 nodes split the topics.
    let mut under: Vec<Vec<u32>> = tree.level(2).map(|u| tree.leaves_under(u)).collect();
    under.sort();
    assert_eq!(under.iter().map(Vec::len).sum::<usize>(), 12);
    for u in tree.level(1) {
        assert_eq!(tree.level_of(tree.parent(u).unwrap()), 2);
    }
    // A level-2 summary is drawn from its children's summaries.
    for u in tree.level(2) {
        let s = tree.summary(u).unwrap();
        assert!(
            tree.children(u)
                .iter()
                .any(|&c| tree.summary(c).unwrap() == s),
            "{s}"
        );
    }
    let capped = TreeOptions {
        max_levels: 1,
        ..opts()
    };
    assert_eq!(
        build_tree(&four_topics(), &capped)
            .unwrap()
            .1
            .nodes_per_level,
        vec![12, 4]
    );
}

#[test]
fn options_and_ids_are_checked() {
    for bad in [
        TreeOptions {
            cluster_size: 1,
            ..opts()
        },
        TreeOptions { dims: 0, ..opts() },
        TreeOptions {
            max_levels: 0,
            ..opts()
        },
    ] {
        let err = build_tree(&corpus(), &bad).unwrap_err();
        assert!(matches!(err, GraphError::InvalidOption { .. }), "{err}");
    }
    let mut dup = corpus();
    dup[3].id = "t0".into();
    let err = build_tree(&dup, &opts()).unwrap_err();
    assert!(
        matches!(err, GraphError::DuplicateId { ref id } if id == "t0"),
        "{err}"
    );
}

#[test]
fn format_round_trips_and_rejects_damage_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree");
    let (tree, _) = build_tree(&four_topics(), &opts()).unwrap();
    let bytes = tree.write(&path, false).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    let back = TreeIndex::read(&path).unwrap();
    assert_eq!(back, tree);
    assert_eq!(back.embedder_kind(), EmbedderKind::Tfidf);
    let image = std::fs::read(&path).unwrap();
    assert_eq!(&image[..8], b"SLEUTHTR");
    let named = |err: &GraphError| err.to_string().contains(&path.display().to_string());
    let read_with = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        TreeIndex::read(&path).unwrap_err()
    };
    // Truncated (a byte short), padded, and a header cut short.
    for bad in [
        &image[..image.len() - 1],
        &[&image[..], &[0]].concat(),
        &image[..50],
    ] {
        let err = read_with(bad);
        assert!(matches!(err, GraphError::Truncated { .. }), "{err}");
        assert!(named(&err), "{err}");
    }
    // A flipped byte anywhere in the body fails the checksum.
    for at in [96, image.len() / 2, image.len() - 1] {
        let mut flipped = image.clone();
        flipped[at] ^= 0x40;
        let err = read_with(&flipped);
        assert!(
            matches!(err, GraphError::Corrupt { ref reason, .. } if reason.contains("checksum")),
            "{err}"
        );
        assert!(named(&err), "{err}");
    }
    // Wrong magic, version and kind.
    let mut magic = image.clone();
    magic[..8].copy_from_slice(b"NOTAFILE");
    let err = read_with(&magic);
    assert!(
        matches!(err, GraphError::NotAGraph { .. }) && named(&err),
        "{err}"
    );
    let mut version = image.clone();
    version[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = read_with(&version);
    assert!(
        matches!(err, GraphError::UnsupportedVersion { found: 2, .. }) && named(&err),
        "{err}"
    );
    let mut kind = image.clone();
    kind[12..16].copy_from_slice(&3u32.to_le_bytes());
    let err = read_with(&kind);
    assert!(
        matches!(err, GraphError::Corrupt { ref reason, .. } if reason.contains("not a tree")),
        "{err}"
    );
    let mut embedder = image.clone();
    embedder[92..96].copy_from_slice(&7u32.to_le_bytes());
    let err = read_with(&embedder);
    assert!(
        matches!(err, GraphError::Corrupt { ref reason, .. } if reason.contains("embedder")),
        "{err}"
    );
    // A passage graph is the wrong kind, not garbage.
    let pg = dir.path().join("pg");
    build_pg(&four_topics(), &PgOptions::default())
        .unwrap()
        .0
        .write(&pg, false)
        .unwrap();
    let err = TreeIndex::read(&pg).unwrap_err();
    assert!(matches!(err, GraphError::WrongKind { .. }), "{err}");
    // And the passage-graph reader names a tree as the wrong kind too.
    std::fs::write(&path, &image).unwrap();
    let err = sleuth::index::graph::PassageGraph::read(&path).unwrap_err();
    assert!(
        matches!(err, GraphError::WrongKind { found, .. } if found.contains("RAPTOR")),
        "{err}"
    );
    // Writing refuses to replace a non-graph file, and replaces a graph only with overwrite.
    std::fs::write(&path, &image).unwrap();
    let err = tree.write(&path, false).unwrap_err();
    assert!(matches!(err, GraphError::Exists { .. }), "{err}");
    tree.write(&pg, true).unwrap();
    assert_eq!(TreeIndex::read(&pg).unwrap(), tree);
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "keep me").unwrap();
    assert!(tree.write(&other, true).is_err());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
}

#[test]
fn building_from_a_file_matches_building_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = write_corpus(dir.path(), &corpus());
    let out = dir.path().join("tree");
    let stats = build_tree_from_path(&corpus_path, &out, &opts()).unwrap();
    assert_eq!(stats.bytes_on_disk, std::fs::metadata(&out).unwrap().len());
    assert_eq!(
        TreeIndex::read(&out).unwrap(),
        build_tree(&corpus(), &opts()).unwrap().0
    );
    let err = build_tree_from_path(&corpus_path, &out, &opts()).unwrap_err();
    assert!(matches!(err, GraphError::Exists { .. }), "{err}");
}

fn tree_only(expand: bool) -> TreeSearchOptions {
    TreeSearchOptions {
        bm25_weight: 0.0,
        expand_summaries: expand,
        ..TreeSearchOptions::default()
    }
}

#[test]
fn collapsed_tree_search_returns_summaries_or_their_passages() {
    let dir = tempfile::tempdir().unwrap();
    let index = bm25_index(dir.path(), &corpus());
    let path = dir.path().join("tree");
    let (tree, _) = build_tree(&corpus(), &opts()).unwrap();
    tree.write(&path, false).unwrap();
    let plain =
        TreeRetriever::open_with(&index, &path, Default::default(), tree_only(false)).unwrap();
    // The query is the rockets summary word for word: its cosine is 1.
    let hits = plain.search("rockets reach orbit after launch", 3).unwrap();
    assert_eq!(hits[0].id, "summary:7", "{hits:?}");
    assert_eq!(hits[0].title, "Summary: Rockets");
    assert_eq!(hits[0].text, "Rockets reach orbit after launch.");
    assert!((hits[0].score - 1.0).abs() < 1e-5, "{hits:?}");
    assert!(hits[1..]
        .iter()
        .all(|h| ["t3", "t4", "t5"].contains(&h.id.as_str())));
    // Expanded, the summary gives way to its best two passages at its own score.
    let expanded =
        TreeRetriever::open_with(&index, &path, Default::default(), tree_only(true)).unwrap();
    let hits = expanded
        .search("rockets reach orbit after launch", 3)
        .unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert!(ids.iter().all(|id| id.starts_with('t')), "{ids:?}");
    assert_eq!(
        (hits[0].score, hits[1].score),
        (hits[0].score, hits[0].score)
    );
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["t3", "t4", "t5"]);
    // Leaves come with their passage text from the BM25 index.
    let t4 = hits.iter().find(|h| h.id == "t4").unwrap();
    assert_eq!(t4.title, "Boosters");
    assert!(t4.text.starts_with("Boosters lift"));
    // Fusion adds BM25 (max-scaled) to the leaves it finds: "Owls" is only in t4.
    let fused = TreeRetriever::open_with(
        &index,
        &path,
        Default::default(),
        TreeSearchOptions {
            bm25_weight: 1.0,
            expand_summaries: false,
            ..TreeSearchOptions::default()
        },
    )
    .unwrap();
    let owl_plain = plain.node_scores("owls").unwrap();
    let owl_fused = fused.node_scores("owls").unwrap();
    assert!((owl_fused[4] - owl_plain[4] - 1.0).abs() < 1e-5);
    assert_eq!(owl_fused[3], owl_plain[3]);
    assert_eq!(fused.search("owls", 1).unwrap()[0].id, "t4");
}

#[test]
fn tree_retriever_keeps_the_retriever_contract() {
    let dir = tempfile::tempdir().unwrap();
    let index = bm25_index(dir.path(), &four_topics());
    let path = dir.path().join("tree");
    build_tree(&four_topics(), &opts())
        .unwrap()
        .0
        .write(&path, false)
        .unwrap();
    for (w, expand) in [(0.0, false), (0.0, true), (1.0, false), (1.0, true)] {
        let opts = TreeSearchOptions {
            bm25_weight: w,
            expand_summaries: expand,
            ..TreeSearchOptions::default()
        };
        let r = TreeRetriever::open_with(&index, &path, Default::default(), opts).unwrap();
        for q in [
            "",
            "?!",
            "cats purr",
            "\"rockets\" AND title:orbit (",
            "zzz qqq",
        ] {
            for k in [0, 1, 3, 20] {
                let hits = r.search(q, k).unwrap();
                assert!(hits.len() <= k, "{q:?} k={k}");
                assert!(
                    hits.windows(2).all(|w| w[0].score >= w[1].score),
                    "{hits:?}"
                );
                assert!(hits.iter().all(|h| h.score.is_finite() && h.score > 0.0));
                let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
                ids.sort();
                ids.dedup();
                assert_eq!(ids.len(), hits.len(), "no repeats: {hits:?}");
            }
        }
        assert!(r.search("", 5).unwrap().is_empty());
        let hits = r.search("cats purr", 20).unwrap();
        assert!(!hits.is_empty());
        if expand {
            assert!(hits.iter().all(|h| h.id.starts_with('q')), "{hits:?}");
        }
    }
}

#[test]
fn a_tree_over_another_corpus_or_of_another_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let index = bm25_index(dir.path(), &corpus());
    let path = dir.path().join("tree");
    build_tree(&four_topics(), &opts())
        .unwrap()
        .0
        .write(&path, false)
        .unwrap();
    let err = TreeRetriever::open(&index, &path).unwrap_err();
    assert!(
        matches!(err, SearchError::Graph(GraphError::IndexMismatch { .. })),
        "{err}"
    );
    let pg = dir.path().join("pg");
    build_pg(&corpus(), &PgOptions::default())
        .unwrap()
        .0
        .write(&pg, false)
        .unwrap();
    let section = SearchSection {
        backend: sleuth::config::SearchBackend::GraphTree,
        index: index.clone(),
        graph: pg,
        ..SearchSection::default()
    };
    let err = section.open().err().unwrap().to_string();
    assert!(
        err.contains("a passage graph") && err.contains("RAPTOR"),
        "{err}"
    );
    build_tree(&corpus(), &opts())
        .unwrap()
        .0
        .write(&path, true)
        .unwrap();
    let ok = SearchSection {
        graph: path,
        ..section
    };
    assert_eq!(ok.open().unwrap().search("cats", 1).unwrap().len(), 1);
}

#[test]
fn cli_builds_a_tree_and_searches_it_through_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = write_corpus(dir.path(), &four_topics());
    let index = dir.path().join("wiki");
    ok(sleuth()
        .args(["index", "build", "--corpus"])
        .arg(&corpus_path)
        .arg("--out")
        .arg(&index));
    let graph = dir.path().join("tree");
    let stats = ok(sleuth()
        .args([
            "index",
            "graph",
            "--kind",
            "tree",
            "--cluster-size",
            "3",
            "--embedder",
            "tfidf",
            "--corpus",
        ])
        .arg(&corpus_path)
        .arg("--out")
        .arg(&graph));
    let stats: serde_json::Value = serde_json::from_str(stats.trim()).unwrap();
    assert_eq!(stats["kind"], "tree");
    assert_eq!(stats["nodes_per_level"], serde_json::json!([12, 4, 2]));
    assert_eq!(stats["passages"], 12);
    let config = dir.path().join("tree.toml");
    std::fs::write(
        &config,
        format!(
            "[search]\nbackend = \"graph-tree\"\nindex = {:?}\ngraph = {:?}\n\n[search.tree_options]\nbm25_weight = 0.0\nexpand_summaries = false\n",
            index.display().to_string(),
            graph.display().to_string()
        ),
    )
    .unwrap();
    let out = ok(sleuth().args(["search", "--config"]).arg(&config).args([
        "-k",
        "5",
        "violins play melodies",
    ]));
    // The three violin passages, then the violin summary (their shared sentence and two of
    // the unique ones: three sentences by default).
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[..3].iter().all(|l| l.contains("\"violins ")), "{out}");
    assert!(
        lines[3].contains("\"Summary: violins 0\" Many violins play melodies."),
        "{out}"
    );
    // --cluster-size belongs to the tree, --max-df to the others.
    for args in [
        ["--kind", "pg", "--cluster-size", "3"],
        ["--kind", "tree", "--max-df", "3"],
    ] {
        let out = sleuth()
            .args(["index", "graph"])
            .args(args)
            .arg("--corpus")
            .arg(&corpus_path)
            .arg("--out")
            .arg(dir.path().join("x"))
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}

/// A MiniLM tree (the default embedder, model from scripts/setup): nodes carry 384-dim
/// model embeddings, the file stores no vocabulary and records the embedder, and the retriever
/// loads the model to embed queries, so a paraphrase that shares no word with the corpus still
/// finds its topic, which the TF-IDF tree cannot.
#[test]
fn minilm_tree_embeds_by_meaning_and_round_trips() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join(sleuth::embed::DEFAULT_MINILM_DIR);
    assert!(
        model.is_dir(),
        "{} missing: run scripts/setup",
        model.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let minilm = TreeOptions {
        embedder: EmbedderKind::Minilm,
        embedder_model: model.clone(),
        ..opts()
    };
    let (tree, stats) = build_tree(&corpus(), &minilm).unwrap();
    assert_eq!(stats.embedder, EmbedderKind::Minilm);
    assert_eq!((stats.dims, stats.vocabulary), (384, 0));
    assert_eq!(tree.embedder_kind(), EmbedderKind::Minilm);
    // Two topics with disjoint meaning: the model puts each in its own cluster too.
    assert_eq!(tree.nodes_per_level(), vec![6, 2]);
    let kids: Vec<Vec<u32>> = (6..8).map(|n| tree.children(n).to_vec()).collect();
    assert!(
        kids.contains(&vec![0, 1, 2]) && kids.contains(&vec![3, 4, 5]),
        "{kids:?}"
    );
    // A leaf's embedding is the model's embedding of "title text".
    let e = sleuth::embed::MiniLmEmbedder::load(&model).unwrap();
    let direct = e.embed("Cats Cats purr softly. Grandma knits woollen sweaters.");
    let diff = direct
        .iter()
        .zip(tree.embedding(0))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-4, "leaf embedding differs by {diff}");

    let path = dir.path().join("tree");
    tree.write(&path, false).unwrap();
    let back = TreeIndex::read(&path).unwrap();
    assert_eq!(back, tree);
    let index = bm25_index(dir.path(), &corpus());
    let query = "spacecraft launched into space";
    let search = |p: &Path, model: &Path| {
        let o = TreeSearchOptions {
            embedder_model: model.to_path_buf(),
            ..tree_only(true)
        };
        TreeRetriever::open_with(&index, p, Default::default(), o)
    };
    let hits = search(&path, &model).unwrap().search(query, 3).unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert!(
        ids.iter().all(|id| ["t3", "t4", "t5"].contains(id)),
        "rocket passages for a paraphrase: {ids:?}"
    );
    // The TF-IDF tree of the same corpus knows none of the query's words.
    let tfidf_path = dir.path().join("tfidf-tree");
    build_tree(&corpus(), &opts())
        .unwrap()
        .0
        .write(&tfidf_path, false)
        .unwrap();
    assert!(search(&tfidf_path, &model)
        .unwrap()
        .search(query, 3)
        .unwrap()
        .is_empty());
    // A MiniLM tree without its model is a clear error naming the folder.
    let err = search(&path, &dir.path().join("no-model")).unwrap_err();
    assert!(err.to_string().contains("no-model"), "{err}");
}

/// Retrieval quality of the tree against plain BM25: support recall on hotpotqa_500 and answer
/// hit on hotpotqa_500 and 2wiki_500, with the same function as `sleuth eval --retrieval` and
/// the other graph tests. Needs `index/wiki` and `index/tree` built from the shared corpus
/// (docs/graph-rag.md), so it is ignored by default:
/// `cargo test --release --test graph_tree -- --ignored --nocapture`.
#[test]
#[ignore = "needs index/wiki and index/tree built from the shared corpus"]
fn real_corpus_recall_against_bm25() {
    use sleuth::eval::retrieval::{evaluate_retrieval, read_support, QueryRewrite};
    use sleuth::qa::read_qa;
    use sleuth::search::Bm25Retriever;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let index = root.join("index/wiki");
    let graph = root.join("index/tree");
    let qa = root.join("../shared/data/qa");
    let hotpot = read_qa(&qa.join("hotpotqa_500.jsonl")).unwrap();
    let support = read_support(&qa.join("hotpotqa_500.support.jsonl")).unwrap();
    let wiki2 = read_qa(&qa.join("2wiki_500.jsonl")).unwrap();
    let none = std::collections::HashMap::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = |name: &str, extra: serde_json::Value, r: &dyn Retriever| {
        let h = evaluate_retrieval(r, &hotpot, &support, QueryRewrite::None, threads).unwrap();
        let w = evaluate_retrieval(r, &wiki2, &none, QueryRewrite::None, threads).unwrap();
        println!(
            "{}",
            serde_json::json!({"retriever": name, "settings": extra, "hotpotqa_500": h, "2wiki_500": w})
        );
        h.support_recall.at5
    };
    if std::env::var_os("SLEUTH_SKIP_BM25").is_none() {
        report(
            "bm25",
            serde_json::json!({}),
            &Bm25Retriever::open(&index).unwrap(),
        );
    }
    let t = std::time::Instant::now();
    let tree = TreeIndex::read(&graph).unwrap();
    println!(
        "{}",
        serde_json::json!({"load_ms": t.elapsed().as_millis(), "nodes_per_level": tree.nodes_per_level(),
            "dims": tree.dims(), "vocabulary": tree.vocabulary().len()})
    );
    drop(tree);
    let mut best = 0.0;
    // (bm25_weight, expand_summaries)
    for (bm25_weight, expand_summaries) in [
        (0.0, false),
        (0.0, true),
        (0.5, true),
        (1.0, false),
        (1.0, true),
        (2.0, true),
    ] {
        let opts = TreeSearchOptions {
            bm25_weight,
            expand_summaries,
            ..TreeSearchOptions::default()
        };
        let r = TreeRetriever::open_with(&index, &graph, Default::default(), opts.clone()).unwrap();
        // How often summaries reach the top 5 (they cost support recall a slot each).
        let summaries_at5: usize = hotpot
            .iter()
            .map(|ex| {
                let hits = r.search(&ex.question, 5).unwrap();
                hits.iter().filter(|h| h.id.starts_with("summary:")).count()
            })
            .sum();
        let at5 = report(
            "graph-tree",
            serde_json::json!({"options": opts, "summary_hits_in_hotpot_top5": summaries_at5}),
            &r,
        );
        best = f64::max(best, at5);
    }
    assert!(best > 0.0);
}
