//! The passage graph (PG) of DESIGN §6: a node per passage, an edge between two passages that
//! share at least τ linked entities, built without an LLM.
//!
//! **Entities** of a passage ([`EntityLinker`]) come from three places, all keyed by their
//! surface string so the sources agree with each other:
//!
//! 1. its own **title**, with a trailing disambiguation in brackets removed (`Ed Wood (film)`
//!    becomes `Ed Wood`): a passage is about its title, so a passage that mentions another
//!    passage's title is linked to it (the bridge of a two-hop question);
//! 2. a **gazetteer of all passage titles**, matched in the text with aho-corasick,
//!    leftmost-longest, case-sensitively, and kept only on word boundaries (the characters
//!    either side are not alphanumeric). Titles shorter than [`PgOptions::min_title_chars`]
//!    characters or without an uppercase letter are left out of the gazetteer: case-sensitive
//!    matching of `it` or `1994` would link almost every passage;
//! 3. **capitalised multi-word spans** of the text (runs of at least two words that start with
//!    an uppercase letter, cut at punctuation, with a leading function word such as `The` or `In`
//!    dropped): names of people, places and works that have no passage of their own, which the
//!    gazetteer cannot see. Turned off by [`PgOptions::capitalised_spans`].
//!
//! **Document-frequency filter.** An entity found in a single passage cannot make an edge, and
//! one found in very many carries little meaning and would make a quadratic number of edges
//! (an entity in `d` passages makes `d(d-1)/2` of them). So only entities whose document
//! frequency `df` is in `2..=`[`PgOptions::max_df`] (default [`DEFAULT_MAX_DF`] = 200) are
//! linked; the others are counted in [`PgStats::entities_too_common`]. This is what filters
//! noisy capitalised spans (`United States`, sentence-initial pairs) and common titles.
//!
//! **Edges.** Two passages are joined when they share at least [`PgOptions::min_shared`] (τ,
//! default [`DEFAULT_MIN_SHARED`] = 1) linked entities; the edge weight is the sum of the
//! shared entities' inverse document frequencies, `Σ_e ln(N / df(e))`, so one rare shared name
//! outweighs several common ones. Edges are undirected and stored in both rows.
//!
//! Building makes two passes over the corpus file ([`build_pg_from_path`]): the first collects
//! titles for the gazetteer, the second links each passage, so only ids and entity lists are
//! held in memory, never the text.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use aho_corasick::{AhoCorasick, MatchKind};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::build::{progress_bar, refuse_existing, round3, title_linker};
use super::{GraphError, GraphKind, PassageGraph};
use crate::corpus::{CorpusError, Passage, PassageReader};

/// Default τ: shared entities needed for an edge.
pub const DEFAULT_MIN_SHARED: usize = 1;
/// Default cap on an entity's document frequency; entities in more passages are not linked.
pub const DEFAULT_MAX_DF: usize = 200;
/// Default minimum length, in characters, of a title in the gazetteer.
pub const DEFAULT_MIN_TITLE_CHARS: usize = 4;

/// Words dropped from the start of a capitalised span: they are capitalised only because they
/// open a sentence.
const LEADING_FUNCTION_WORDS: &[&str] = &[
    "A", "An", "And", "As", "At", "After", "Before", "But", "By", "During", "For", "From", "He",
    "Her", "His", "If", "In", "It", "Its", "On", "She", "Since", "The", "Their", "There", "These",
    "They", "This", "Those", "To", "When", "While", "With",
];

/// How to build a passage graph. `Default` gives the documented defaults; as a config section it
/// reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgOptions {
    /// τ: an edge needs at least this many shared linked entities; at least 1.
    /// Default: [`DEFAULT_MIN_SHARED`].
    pub min_shared: usize,
    /// Entities in more passages than this are not linked (see the module doc); at least 2.
    /// Default: [`DEFAULT_MAX_DF`].
    pub max_df: usize,
    /// Titles shorter than this many characters (after removing a bracketed suffix) are left
    /// out of the gazetteer. Default: [`DEFAULT_MIN_TITLE_CHARS`].
    pub min_title_chars: usize,
    /// Also link capitalised multi-word spans. Default: `true`.
    pub capitalised_spans: bool,
    /// Replace an existing graph file at the output path. Default: `false`.
    pub overwrite: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    /// Default: `true`.
    pub progress: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            min_shared: DEFAULT_MIN_SHARED,
            max_df: DEFAULT_MAX_DF,
            min_title_chars: DEFAULT_MIN_TITLE_CHARS,
            capitalised_spans: true,
            overwrite: false,
            progress: true,
        }
    }
}

impl PgOptions {
    fn validate(&self) -> Result<(), GraphError> {
        if self.min_shared == 0 {
            return Err(GraphError::InvalidOption {
                name: "min_shared",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_df < 2 {
            return Err(GraphError::InvalidOption {
                name: "max_df",
                reason: format!("{} links nothing; must be at least 2", self.max_df),
            });
        }
        Ok(())
    }
}

/// What a passage-graph build produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgStats {
    /// Nodes (passages).
    pub passages: u64,
    /// Distinct entities found (titles, gazetteer matches, capitalised spans).
    pub entities: u64,
    /// Entities with document frequency in `2..=max_df`, the ones that make edges.
    pub entities_linked: u64,
    /// Entities skipped for a document frequency above `max_df`.
    pub entities_too_common: u64,
    /// Undirected edges.
    pub edges: u64,
    /// Passages with no edge.
    pub isolated: u64,
    /// Wall-clock build time in seconds (reading the corpus and writing the file included).
    pub seconds: f64,
    /// Size of the written file in bytes (0 when nothing was written).
    pub bytes_on_disk: u64,
}

/// Finds the entities of a passage (module doc): its title, gazetteer titles in its text, and
/// capitalised multi-word spans.
#[derive(Debug, Clone)]
pub struct EntityLinker {
    automaton: AhoCorasick,
    surfaces: Vec<String>,
    min_title_chars: usize,
    capitalised_spans: bool,
}

impl EntityLinker {
    /// Builds the gazetteer from passage titles (duplicates are fine).
    ///
    /// # Panics
    /// Only if aho-corasick cannot build an automaton over the titles (it has no size limit by
    /// default, so this does not happen in practice).
    pub fn new<'a>(
        titles: impl IntoIterator<Item = &'a str>,
        min_title_chars: usize,
        capitalised_spans: bool,
    ) -> Self {
        let mut surfaces: Vec<String> = titles
            .into_iter()
            .filter_map(|t| title_surface(t, min_title_chars))
            .map(str::to_string)
            .collect();
        surfaces.sort_unstable();
        surfaces.dedup();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&surfaces)
            .expect("a gazetteer automaton over titles builds");
        Self {
            automaton,
            surfaces,
            min_title_chars,
            capitalised_spans,
        }
    }

    /// Titles in the gazetteer.
    pub fn gazetteer_len(&self) -> usize {
        self.surfaces.len()
    }

    /// The distinct entities of `passage`, sorted.
    pub fn link(&self, passage: &Passage) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(own) = title_surface(&passage.title, self.min_title_chars) {
            out.push(own.to_string());
        }
        let text = passage.text.as_str();
        for m in self.automaton.find_iter(text) {
            let before = text[..m.start()].chars().next_back();
            let after = text[m.end()..].chars().next();
            if !before.is_some_and(char::is_alphanumeric)
                && !after.is_some_and(char::is_alphanumeric)
            {
                out.push(self.surfaces[m.pattern().as_usize()].clone());
            }
        }
        if self.capitalised_spans {
            capitalised_spans(text, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A title's surface form: the title without a trailing ` (…)`, trimmed; `None` when it is too
/// short or has no uppercase letter.
fn title_surface(title: &str, min_chars: usize) -> Option<&str> {
    let mut s = title.trim();
    if s.ends_with(')') {
        if let Some(open) = s.rfind(" (") {
            s = s[..open].trim_end();
        }
    }
    (s.chars().count() >= min_chars && s.chars().any(char::is_uppercase)).then_some(s)
}

/// Appends the capitalised multi-word spans of `text` to `out`.
fn capitalised_spans(text: &str, out: &mut Vec<String>) {
    fn flush(span: &mut Vec<&str>, out: &mut Vec<String>) {
        let start = usize::from(
            span.first()
                .is_some_and(|w| LEADING_FUNCTION_WORDS.contains(w)),
        );
        if span.len() >= start + 2 {
            out.push(span[start..].join(" "));
        }
        span.clear();
    }
    let mut span: Vec<&str> = Vec::new();
    for raw in text.split_whitespace() {
        let not_word = |c: char| !c.is_alphanumeric();
        if raw.starts_with(not_word) {
            flush(&mut span, out);
        }
        let word = raw.trim_matches(not_word);
        if word.chars().next().is_some_and(char::is_uppercase) {
            span.push(word);
        } else {
            flush(&mut span, out);
        }
        if raw.ends_with(not_word) {
            flush(&mut span, out);
        }
    }
    flush(&mut span, out);
}

/// Builds the passage graph of an in-memory corpus (no file is written; see
/// [`PassageGraph::write`]).
///
/// # Errors
/// [`GraphError::InvalidOption`] for an option out of range; [`GraphError::DuplicateId`] when
/// two passages share an id.
pub fn build_pg(
    passages: &[Passage],
    opts: &PgOptions,
) -> Result<(PassageGraph, PgStats), GraphError> {
    opts.validate()?;
    let start = Instant::now();
    let linker = EntityLinker::new(
        passages.iter().map(|p| p.title.as_str()),
        opts.min_title_chars,
        opts.capitalised_spans,
    );
    let (graph, mut stats) = link_and_connect(
        &linker,
        passages.iter().cloned().map(Ok),
        opts,
        &ProgressBar::hidden(),
    )?;
    stats.seconds = round3(start.elapsed().as_secs_f64());
    Ok((graph, stats))
}

/// Builds the passage graph of the corpus file `corpus` (JSONL, plain or gzip) and writes it to
/// `out` atomically with [`PassageGraph::write`]. Reads the corpus twice: titles
/// first, then the passages to link.
///
/// # Errors
/// [`GraphError::Corpus`] naming the corpus file and line; [`GraphError::Exists`] when `out`
/// may not be replaced; [`GraphError::Io`] naming the file for filesystem failures;
/// [`GraphError::InvalidOption`] and [`GraphError::DuplicateId`] as for [`build_pg`].
pub fn build_pg_from_path(
    corpus: &Path,
    out: &Path,
    opts: &PgOptions,
) -> Result<PgStats, GraphError> {
    opts.validate()?;
    let start = Instant::now();
    let _span =
        tracing::info_span!("build_pg", corpus = %corpus.display(), out = %out.display()).entered();
    refuse_existing(out, opts.overwrite)?;
    let bar = progress_bar(opts.progress);
    let linker = title_linker(corpus, opts.min_title_chars, opts.capitalised_spans, &bar)?;
    bar.set_position(0);
    bar.set_message("linking entities");
    let (graph, mut stats) = link_and_connect(&linker, PassageReader::open(corpus)?, opts, &bar)?;
    bar.set_message("writing");
    stats.bytes_on_disk = graph.write(out, opts.overwrite)?;
    bar.finish_and_clear();
    stats.seconds = round3(start.elapsed().as_secs_f64());
    tracing::info!(?stats, "built passage graph");
    Ok(stats)
}

/// Links every passage, then joins passages that share enough entities.
fn link_and_connect(
    linker: &EntityLinker,
    passages: impl Iterator<Item = Result<Passage, CorpusError>>,
    opts: &PgOptions,
    bar: &ProgressBar,
) -> Result<(PassageGraph, PgStats), GraphError> {
    let mut ids: Vec<String> = Vec::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut interner: HashMap<String, u32> = HashMap::new();
    let mut df: Vec<u32> = Vec::new();
    let mut entities_of: Vec<Vec<u32>> = Vec::new();
    for p in passages {
        let p = p?;
        let node = ids.len() as u32;
        if seen.insert(p.id.clone(), node).is_some() {
            return Err(GraphError::DuplicateId { id: p.id });
        }
        let mut ents: Vec<u32> = linker
            .link(&p)
            .into_iter()
            .map(|e| {
                let next = interner.len() as u32;
                *interner.entry(e).or_insert(next)
            })
            .collect();
        ents.sort_unstable();
        for &e in &ents {
            if e as usize == df.len() {
                df.push(0);
            }
            df[e as usize] += 1;
        }
        entities_of.push(ents);
        ids.push(p.id);
        if ids.len().is_multiple_of(1024) {
            bar.set_position(ids.len() as u64);
        }
    }
    drop(seen);
    drop(interner);
    let n = ids.len();
    bar.set_position(n as u64);

    // Keep only entities that can make edges and are not too common; weigh them by IDF.
    let idf: Vec<f32> = df
        .iter()
        .map(|&d| {
            let d = d as usize;
            if d >= 2 && d <= opts.max_df && d < n {
                (n as f64 / d as f64).ln() as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut postings: Vec<Vec<u32>> = vec![Vec::new(); df.len()];
    for (node, ents) in entities_of.iter_mut().enumerate() {
        ents.retain(|&e| idf[e as usize] > 0.0);
        for &e in ents.iter() {
            postings[e as usize].push(node as u32);
        }
    }
    let stats = PgStats {
        passages: n as u64,
        entities: df.len() as u64,
        entities_linked: idf.iter().filter(|&&w| w > 0.0).count() as u64,
        entities_too_common: df.iter().filter(|&&d| d as usize > opts.max_df).count() as u64,
        ..PgStats::default()
    };

    // Per node, accumulate shared-entity counts and IDF sums over its entities' postings
    // (cost Σ_e df(e)², bounded by the df cap), in dense scratch arrays reset after each row.
    bar.set_message("joining passages");
    let mut weight = vec![0f32; n];
    let mut shared = vec![0u32; n];
    let mut touched: Vec<u32> = Vec::new();
    let mut adjacency: Vec<Vec<(u32, f32)>> = Vec::with_capacity(n);
    for (a, ents) in entities_of.iter().enumerate() {
        for &e in ents {
            for &b in &postings[e as usize] {
                if b as usize == a {
                    continue;
                }
                if shared[b as usize] == 0 {
                    touched.push(b);
                }
                shared[b as usize] += 1;
                weight[b as usize] += idf[e as usize];
            }
        }
        let mut row = Vec::new();
        for &b in &touched {
            if shared[b as usize] as usize >= opts.min_shared {
                row.push((b, weight[b as usize]));
            }
            shared[b as usize] = 0;
            weight[b as usize] = 0.0;
        }
        touched.clear();
        adjacency.push(row);
        if a.is_multiple_of(1024) {
            bar.set_position(a as u64);
        }
    }
    let isolated = adjacency.iter().filter(|r| r.is_empty()).count() as u64;
    let graph = PassageGraph::from_adjacency(GraphKind::Passage, ids, adjacency);
    let stats = PgStats {
        edges: graph.num_edges() as u64,
        isolated,
        ..stats
    };
    Ok((graph, stats))
}
