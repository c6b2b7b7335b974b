//! Index a corpus with BM25 and search it.
//!
//! `cargo run --release --example index_and_search [-- CORPUS.jsonl[.gz] [N]]`
//!
//! Reads the first N passages (default 5,000) of the shared Wikipedia corpus, builds a tantivy
//! BM25 index in a temporary folder (built beside its destination and renamed, so an
//! interrupted build leaves nothing half-written), then answers three queries with the
//! [`Retriever`] seam every search backend implements. `sleuth index build` does the same
//! over the whole corpus; `sleuth search` is the query half.

use std::time::Instant;

use sleuth::corpus::PassageReader;
use sleuth::index::{build_bm25, IndexOptions};
use sleuth::search::{Bm25Retriever, Retriever};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let corpus = args
        .next()
        .unwrap_or_else(|| "../shared/data/corpus/wiki_paragraphs.jsonl.gz".into());
    let n: usize = args.next().map_or(Ok(5_000), |s| s.parse())?;

    // 1. Passages {id, title, text} stream from JSONL (plain or gzip); a malformed line is an
    //    error naming the file and line, so `take(n)` hands the index builder `Result`s.
    let passages = PassageReader::open(&corpus)?.take(n);

    // 2. Build. The default analyzer is English stemming (chosen by recall, docs/retrieval.md).
    let dir = tempfile::tempdir()?;
    let index = dir.path().join("bm25");
    let t = Instant::now();
    let stats = build_bm25(passages, &index, &IndexOptions::default())?;
    println!(
        "indexed {} passages in {:.1} s",
        stats.passages,
        t.elapsed().as_secs_f64()
    );

    // 3. Search: any string is a valid query (operator characters are read as text).
    let retriever = Bm25Retriever::open(&index)?;
    for query in [
        "Which stadium do the Kansas City Chiefs play in?",
        "first woman to win a Nobel Prize",
        "AND OR \"unbalanced quote (",
    ] {
        println!("\nquery: {query}");
        for (rank, hit) in retriever.search(query, 3)?.iter().enumerate() {
            let text: String = hit.text.chars().take(90).collect();
            println!("  {}. [{:.2}] {} — {text}…", rank + 1, hit.score, hit.title);
        }
    }
    Ok(())
}
