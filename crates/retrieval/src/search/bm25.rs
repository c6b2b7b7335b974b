//! BM25 search over a local tantivy index built by [`crate::index::build_bm25`].
//!
//! **Queries are bags of words, not query syntax.** tantivy's `QueryParser` gives meaning to
//! `:`, quotes, `AND`/`OR`/`NOT`, `+`/`-`, `*`, `~`, `^` and brackets, and rejects malformed
//! input. A model's query is none of that: it may hold any of those characters by accident, and
//! a syntax error in the middle of a rollout is useless. So the query is run through the index's
//! own text analyzer (the one named in the schema, from [`tantivy::Index::tokenizer_for_field`]),
//! exactly as passages were at build time, and the distinct tokens become a disjunction of BM25
//! term queries over `title` and `text`:
//!
//! ```text
//! score(d) = Σ_t title_boost · bm25(t, d.title) + bm25(t, d.text)
//! ```
//!
//! `AND` is then just the word "and", `title:foo` the words "title" and "foo". Repeated words
//! count once, and only the first [`Bm25Options::max_query_terms`] distinct tokens are used, so a
//! 10,000-word query costs no more than a 64-word one. A query with no tokens (empty,
//! punctuation only) has no hits.
//!
//! **Concurrency.** One [`tantivy::IndexReader`] is opened with a manual reload policy (a built
//! index never changes in place: a rebuild renames a new directory over it, so re-open to see
//! it). Each search takes a cheap, pooled [`tantivy::Searcher`] from it, so one
//! `Bm25Retriever` serves any number of threads without locking.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, FieldType, IndexRecordOption, Schema, Value};
use tantivy::tokenizer::{TextAnalyzer, TokenStream};
use tantivy::{DocAddress, Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument, Term};

use super::{Hit, Retriever, SearchError};
use crate::corpus::Passage;
use crate::index::{IndexManifest, FIELD_ID, FIELD_TEXT, FIELD_TITLE};

/// Default weight of a title match relative to a text match. Chosen by measurement
/// (`sleuth eval --retrieval`, docs/retrieval.md): on hotpotqa_500, boost 0.25 gives support
/// recall@10 .773 and both-titles@10 .619 against .761 / .584 at 1.0; boosts ≥ 2 lose ~6 points.
pub const DEFAULT_TITLE_BOOST: f32 = 0.25;
/// Default cap on the distinct query tokens used per field.
pub const DEFAULT_MAX_QUERY_TERMS: usize = 64;

/// Knobs of the BM25 retriever. `Default` gives the documented defaults; as a config section
/// it reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bm25Options {
    /// Multiplier on the BM25 score of title matches; text matches weigh 1. `0` ignores titles.
    /// Must be finite and non-negative. Default: [`DEFAULT_TITLE_BOOST`].
    pub title_boost: f32,
    /// At most this many distinct query tokens are searched, the first ones in query order.
    /// Must be at least 1. Default: [`DEFAULT_MAX_QUERY_TERMS`].
    pub max_query_terms: usize,
}

impl Default for Bm25Options {
    fn default() -> Self {
        Self {
            title_boost: DEFAULT_TITLE_BOOST,
            max_query_terms: DEFAULT_MAX_QUERY_TERMS,
        }
    }
}

impl Bm25Options {
    fn validate(&self) -> Result<(), SearchError> {
        if !self.title_boost.is_finite() || self.title_boost < 0.0 {
            return Err(SearchError::InvalidOption {
                name: "title_boost",
                reason: format!("{} is not a finite non-negative number", self.title_boost),
            });
        }
        if self.max_query_terms == 0 {
            return Err(SearchError::InvalidOption {
                name: "max_query_terms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A [`Retriever`] over a local tantivy BM25 index. Cheap to share: wrap it in an `Arc` and
/// search from any thread.
pub struct Bm25Retriever {
    path: PathBuf,
    reader: IndexReader,
    id: Field,
    title: Field,
    text: Field,
    title_analyzer: TextAnalyzer,
    text_analyzer: TextAnalyzer,
    manifest: Option<IndexManifest>,
    opts: Bm25Options,
}

impl std::fmt::Debug for Bm25Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Retriever")
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Bm25Retriever {
    /// Opens the index in `dir` with [`Bm25Options::default()`].
    ///
    /// # Errors
    /// See [`Bm25Retriever::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SearchError> {
        Self::open_with(dir, Bm25Options::default())
    }

    /// Opens the index in `dir`. The manifest, when present, says which tokenizer to register;
    /// an index without one (built by other tools) must use a tokenizer tantivy ships.
    ///
    /// # Errors
    /// All name `dir`:
    /// - [`SearchError::NotAnIndex`]: `dir` is missing, not a directory, or has no `meta.json`;
    /// - [`SearchError::Manifest`]: `sleuth-index.json` is malformed or from a newer format;
    /// - [`SearchError::Corrupt`]: tantivy cannot open the metadata or segment files;
    /// - [`SearchError::Schema`]: `id`, `title` or `text` is missing, unstored, not indexed
    ///   with term frequencies, or names an unknown tokenizer;
    /// - [`SearchError::InvalidOption`]: an option is out of range.
    pub fn open_with(dir: impl AsRef<Path>, opts: Bm25Options) -> Result<Self, SearchError> {
        let path = dir.as_ref().to_path_buf();
        opts.validate()?;
        let not_an_index = |reason: String| SearchError::NotAnIndex {
            path: path.clone(),
            reason,
        };
        match fs::metadata(&path) {
            Err(e) => return Err(not_an_index(e.to_string())),
            Ok(meta) if !meta.is_dir() => return Err(not_an_index("not a directory".into())),
            Ok(_) => {}
        }
        if !path.join("meta.json").is_file() {
            return Err(not_an_index("no tantivy meta.json in it".into()));
        }
        let manifest = IndexManifest::read(&path)?;
        let corrupt = |source| SearchError::Corrupt {
            path: path.clone(),
            source,
        };
        let index = Index::open_in_dir(&path).map_err(corrupt)?;
        if let Some(manifest) = &manifest {
            manifest.tokenizer.register(&index);
        }

        let schema = index.schema();
        let schema_err = |reason: String| SearchError::Schema {
            path: path.clone(),
            reason,
        };
        let id = passage_field(&schema, FIELD_ID, false).map_err(schema_err)?;
        let title = passage_field(&schema, FIELD_TITLE, true).map_err(schema_err)?;
        let text = passage_field(&schema, FIELD_TEXT, true).map_err(schema_err)?;
        let analyzer = |field, name| {
            index
                .tokenizer_for_field(field)
                .map_err(|e| schema_err(format!("field `{name}`: {e}")))
        };
        let title_analyzer = analyzer(title, FIELD_TITLE)?;
        let text_analyzer = analyzer(text, FIELD_TEXT)?;

        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(corrupt)?;
        let retriever = Self {
            path,
            reader,
            id,
            title,
            text,
            title_analyzer,
            text_analyzer,
            manifest,
            opts,
        };
        tracing::debug!(
            path = %retriever.path.display(),
            passages = retriever.num_passages(),
            "opened BM25 index"
        );
        Ok(retriever)
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index manifest; `None` for an index built without one.
    pub fn manifest(&self) -> Option<&IndexManifest> {
        self.manifest.as_ref()
    }

    /// The options in force.
    pub fn options(&self) -> &Bm25Options {
        &self.opts
    }

    /// Number of passages in the index.
    pub fn num_passages(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Looks a passage up by its exact id; `Ok(None)` when absent.
    ///
    /// # Errors
    /// [`SearchError::Backend`] when the index cannot be read.
    pub fn get(&self, id: &str) -> Result<Option<Passage>, SearchError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(Term::from_field_text(self.id, id), IndexRecordOption::Basic);
        let top = searcher
            .search(&query, &TopDocs::with_limit(1))
            .map_err(|e| self.backend_err(e))?;
        let Some(&(_, address)) = top.first() else {
            return Ok(None);
        };
        let hit = self.load(&searcher, address, 0.0)?;
        Ok(Some(Passage {
            id: hit.id,
            title: hit.title,
            text: hit.text,
        }))
    }

    /// The distinct tokens of `query` under `analyzer`, in query order, at most
    /// `max_query_terms` of them.
    fn query_terms(&self, analyzer: &TextAnalyzer, query: &str) -> Vec<String> {
        let mut analyzer = analyzer.clone();
        let mut stream = analyzer.token_stream(query);
        let mut seen = HashSet::new();
        let mut terms = Vec::new();
        while terms.len() < self.opts.max_query_terms && stream.advance() {
            let token = &stream.token().text;
            if !token.is_empty() && seen.insert(token.clone()) {
                terms.push(token.clone());
            }
        }
        terms
    }

    fn build_query(&self, query: &str) -> Option<BooleanQuery> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let fields = [
            (self.title, &self.title_analyzer, self.opts.title_boost),
            (self.text, &self.text_analyzer, 1.0),
        ];
        for (field, analyzer, boost) in fields {
            if boost == 0.0 {
                continue;
            }
            for term in self.query_terms(analyzer, query) {
                let term_query: Box<dyn Query> = Box::new(TermQuery::new(
                    Term::from_field_text(field, &term),
                    IndexRecordOption::WithFreqs,
                ));
                let clause = if boost == 1.0 {
                    term_query
                } else {
                    Box::new(BoostQuery::new(term_query, boost))
                };
                clauses.push((Occur::Should, clause));
            }
        }
        (!clauses.is_empty()).then(|| BooleanQuery::new(clauses))
    }

    fn load(
        &self,
        searcher: &Searcher,
        address: DocAddress,
        score: f32,
    ) -> Result<Hit, SearchError> {
        let doc: TantivyDocument = searcher.doc(address).map_err(|e| self.backend_err(e))?;
        let get = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        Ok(Hit {
            id: get(self.id),
            title: get(self.title),
            text: get(self.text),
            score,
        })
    }

    /// The top `k` documents (`1 ≤ k ≤ num_docs`) and every document tied with the `k`-th
    /// ([`same_score`]):
    /// which of several equal-scoring passages make the cut must not depend on the order the
    /// index stored them in, and a multi-threaded index build stores them in a different order
    /// each time (two builds of one corpus returned the 1943–44 or the 1944–45 season of the
    /// same club third for one query, and two runs of the README's main job diverged from
    /// there). The caller sorts ties by passage id and cuts at `k`. The limit starts at `k + 1`
    /// and doubles until the last document scores below the `k`-th, up to `k × 64`: a tie
    /// wider than that (hundreds of identical passages) is cut where the index order puts it.
    fn top_with_ties(
        &self,
        searcher: &Searcher,
        query: &dyn tantivy::query::Query,
        k: usize,
    ) -> Result<Vec<(f32, DocAddress)>, SearchError> {
        let total = usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX);
        // One past the cut: most queries have no tie there and need one search.
        let mut limit = k.saturating_add(1).min(total);
        loop {
            let mut top = searcher
                .search(query, &TopDocs::with_limit(limit))
                .map_err(|e| self.backend_err(e))?;
            let kth = top.get(k - 1).map(|&(s, _)| s);
            let last = top.last().map(|&(s, _)| s);
            let tie_may_continue = top.len() == limit
                && matches!((kth, last), (Some(kth), Some(last)) if same_score(kth, last));
            if !tie_may_continue || limit >= total || limit >= k.saturating_mul(64) {
                // Only the k-th's ties are worth loading from the store: drop the hits the
                // wider limit brought in below it (usually the one extra hit).
                if let Some(kth) = kth {
                    let keep = top
                        .iter()
                        .take_while(|&&(s, _)| s > kth || same_score(s, kth))
                        .count();
                    top.truncate(keep);
                }
                return Ok(top);
            }
            limit = limit.saturating_mul(2).min(total);
        }
    }

    fn backend_err(&self, source: tantivy::TantivyError) -> SearchError {
        SearchError::Backend {
            path: self.path.clone(),
            source,
        }
    }
}

impl Retriever for Bm25Retriever {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, SearchError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let Some(boolean) = self.build_query(query) else {
            return Ok(Vec::new());
        };
        let searcher = self.reader.searcher();
        // TopDocs allocates room for 2k entries up front and panics on k = 0.
        let k = k.min(usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX));
        if k == 0 {
            return Ok(Vec::new());
        }
        let top = self.top_with_ties(&searcher, &boolean, k)?;
        let mut hits = top
            .into_iter()
            .map(|(score, address)| self.load(&searcher, address, score))
            .collect::<Result<Vec<_>, _>>()?;
        // Equal scores in id order, so results do not depend on segment layout. "Equal" allows
        // rounding: tantivy sums a document's term scores in the order its scorers reach it,
        // so two identical passages can score a few ulps apart depending on where they sit.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        for tied in hits.chunk_by_mut(|a, b| same_score(a.score, b.score)) {
            tied.sort_by(|a, b| a.id.cmp(&b.id));
        }
        hits.truncate(k);
        Ok(hits)
    }
}

/// Whether two BM25 scores are equal up to the rounding of their summation order (relative
/// 1e-5; a real difference in a term's frequency or a field's length is far larger).
fn same_score(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
}

/// Resolves a passage field, checking it is a stored string field, indexed with term
/// frequencies when `needs_freqs`.
fn passage_field(schema: &Schema, name: &str, needs_freqs: bool) -> Result<Field, String> {
    let field = schema
        .get_field(name)
        .map_err(|_| format!("no field `{name}`"))?;
    let entry = schema.get_field_entry(field);
    let FieldType::Str(options) = entry.field_type() else {
        return Err(format!("field `{name}` is not a text field"));
    };
    if !options.is_stored() {
        return Err(format!("field `{name}` is not stored"));
    }
    match options.get_indexing_options() {
        None => Err(format!("field `{name}` is not indexed")),
        Some(indexing) if needs_freqs && !indexing.index_option().has_freq() => Err(format!(
            "field `{name}` is indexed without term frequencies"
        )),
        Some(_) => Ok(field),
    }
}
