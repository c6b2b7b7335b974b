//! The knowledge-graph kinds of DESIGN §6 (after arXiv 2503.04338), built without an LLM: the
//! **KG**, the **textual KG** (TKG) and the **rich KG** (RKG).
//!
//! **Entities** are what the passage graph links ([`EntityLinker`]: a passage's own title,
//! gazetteer titles in its text, capitalised multi-word spans). Every entity found in at most
//! [`KgOptions::max_df`] passages becomes a node that lists the passages it was linked in; more
//! common ones (`United States`, sentence-initial pairs) are dropped, because in personalized
//! PageRank such hubs pass the walk on to everything. Unlike the passage graph, entities found in
//! a single passage are kept: a KG edge needs only one sentence.
//!
//! **Relations.** Each passage is split into sentences ([`split_sentences`]); the passage's
//! entities are located in each sentence (whole-word, case-sensitive, leftmost-longest, so
//! `Kansas City Chiefs` hides the `Kansas City` inside it). Every pair of distinct entities
//! mentioned in one sentence makes a relation `(head, tail, text)`: head is the one mentioned
//! first, and the text is the words between the two mentions, trimmed of punctuation at both
//! ends and cut to [`KgOptions::relation_words`] words. The same triple from several sentences
//! is one relation listing all its source passages. This is the LLM-free stand-in for triple
//! extraction: the words between two names are where a sentence states how they relate
//! (`Andy Reid` —`was born in`→ `Los Angeles`).
//!
//! **Descriptions** (TKG, RKG): an entity's or relation's description is the sentences that
//! mention it, in corpus order, at most [`KgOptions::description_sentences`] of them and no more
//! than [`KgOptions::description_words`] words in all (the first sentence is always taken, even
//! when longer). Sentences are stored once in a shared table and referred to by id.
//!
//! **Keywords** (RKG): the [`KgOptions::keywords`] terms of a relation's source sentences (all
//! of them, not only the described ones) with the highest TF-IDF, where a term is a lowercased
//! alphanumeric word of at least two characters that is not an English stop word nor a word of
//! the head's or tail's name, `tf` counts it over the source sentences and
//! `idf = ln(S / sf)` with `S` the corpus's sentences and `sf` the sentences holding the term.
//! Ties go to the alphabetically first term.
//!
//! **With an LLM** ([`KgOptions::llm`]), entities, relations, descriptions and keywords come
//! from an extraction reply per passage instead (the `llm` submodule's doc gives the rules), and
//! the corpus is read once; the file format is the same.
//!
//! Building from a file reads the corpus three times: titles for the gazetteer, entities for
//! document frequencies, then sentences; only ids, entity lists and (for TKG/RKG) the sentences
//! that mention an entity are held in memory.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::build::{progress_bar, refuse_existing, round3, title_linker};
use super::{
    Entity, EntityLinker, GraphError, GraphKind, KnowledgeGraph, Relation, DEFAULT_MIN_TITLE_CHARS,
};
pub use crate::corpus::text::text_terms;
use crate::corpus::{CorpusError, Passage, PassageReader};
use crate::llm::{LlmClient, LlmOptions};

mod llm;

/// Default cap on an entity's document frequency; more common entities are not nodes.
pub const DEFAULT_KG_MAX_DF: usize = 200;
/// Default cap, in words, on a relation's text.
pub const DEFAULT_RELATION_WORDS: usize = 12;
/// Default cap on the sentences of one description.
pub const DEFAULT_DESCRIPTION_SENTENCES: usize = 3;
/// Default cap on the words of one description.
pub const DEFAULT_DESCRIPTION_WORDS: usize = 60;
/// Default number of keywords per relation (RKG).
pub const DEFAULT_KEYWORDS: usize = 5;

/// Words before a period that do not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Prof", "Inc", "Ltd", "Co", "Corp", "vs", "No",
    "Mt", "Gen", "Col", "Lt", "Sgt", "Capt", "Rev", "Fr", "Ft", "Gov", "Sen", "Rep", "Bros",
];

/// How to build a knowledge graph. `Default` gives the documented defaults; as a config section
/// it reads from TOML/JSON with every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KgOptions {
    /// Entities linked in more passages than this are not nodes; at least 1.
    /// Default: [`DEFAULT_KG_MAX_DF`].
    pub max_df: usize,
    /// Titles shorter than this many characters are left out of the gazetteer.
    /// Default: [`DEFAULT_MIN_TITLE_CHARS`].
    pub min_title_chars: usize,
    /// Also link capitalised multi-word spans. Default: `true`.
    pub capitalised_spans: bool,
    /// Cap, in words, on a relation's text; at least 1. Default: [`DEFAULT_RELATION_WORDS`].
    pub relation_words: usize,
    /// Cap on the sentences of a description (TKG, RKG); at least 1.
    /// Default: [`DEFAULT_DESCRIPTION_SENTENCES`].
    pub description_sentences: usize,
    /// Cap on the words of a description (TKG, RKG). Default: [`DEFAULT_DESCRIPTION_WORDS`].
    pub description_words: usize,
    /// Keywords per relation (RKG); at least 1. Default: [`DEFAULT_KEYWORDS`].
    pub keywords: usize,
    /// Replace an existing graph file at the output path. Default: `false`.
    pub overwrite: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    /// Default: `true`.
    pub progress: bool,
    /// Extract entities and relations with this OpenAI-compatible chat endpoint instead of
    /// sentence co-occurrence (module doc). Its cache defaults to `<out>.llm-cache.jsonl`
    /// beside the output of [`build_kg_from_path`]; [`build_kg`] caches only when
    /// [`LlmOptions::cache`] is set. Default: `None` (no LLM).
    pub llm: Option<LlmOptions>,
}

impl Default for KgOptions {
    fn default() -> Self {
        Self {
            max_df: DEFAULT_KG_MAX_DF,
            min_title_chars: DEFAULT_MIN_TITLE_CHARS,
            capitalised_spans: true,
            relation_words: DEFAULT_RELATION_WORDS,
            description_sentences: DEFAULT_DESCRIPTION_SENTENCES,
            description_words: DEFAULT_DESCRIPTION_WORDS,
            keywords: DEFAULT_KEYWORDS,
            overwrite: false,
            progress: true,
            llm: None,
        }
    }
}

impl KgOptions {
    fn validate(&self, kind: GraphKind) -> Result<(), GraphError> {
        let bad = |name, reason: &str| {
            Err(GraphError::InvalidOption {
                name,
                reason: reason.into(),
            })
        };
        if !kind.is_knowledge_graph() {
            return bad("kind", "a knowledge graph is built as kg, tkg or rkg");
        }
        if self.max_df == 0 {
            return bad("max_df", "must be at least 1");
        }
        if self.relation_words == 0 {
            return bad("relation_words", "must be at least 1");
        }
        if self.description_sentences == 0 {
            return bad("description_sentences", "must be at least 1");
        }
        if self.keywords == 0 {
            return bad("keywords", "must be at least 1");
        }
        if let Some(llm) = &self.llm {
            llm.validate()?;
        }
        Ok(())
    }
}

/// What a knowledge-graph build produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KgStats {
    /// `kg`, `tkg` or `rkg`.
    pub kind: GraphKind,
    /// Passages read.
    pub passages: u64,
    /// Sentences in the corpus.
    pub sentences: u64,
    /// Entity nodes.
    pub entities: u64,
    /// Entities dropped for a document frequency above `max_df`.
    pub entities_too_common: u64,
    /// Relation edges (distinct head, tail, text triples).
    pub relations: u64,
    /// Distinct unordered entity pairs joined by a relation (edges of the PageRank graph).
    pub entity_pairs: u64,
    /// Entities in no relation.
    pub isolated_entities: u64,
    /// Sentences stored for descriptions (0 for a KG).
    pub description_sentences: u64,
    /// Wall-clock build time in seconds (reading the corpus and writing the file included).
    pub seconds: f64,
    /// Size of the written file in bytes (0 when nothing was written).
    pub bytes_on_disk: u64,
    /// With an LLM: extraction requests completed over the network (0 without).
    #[serde(default)]
    pub llm_requests: u64,
    /// With an LLM: passages answered from the reply cache without a request.
    #[serde(default)]
    pub llm_cached: u64,
    /// With an LLM: retried attempts (connection errors, timeouts, 429, 5xx).
    #[serde(default)]
    pub llm_retries: u64,
    /// With an LLM: passages whose reply held no usable JSON (left without entities).
    #[serde(default)]
    pub llm_failures: u64,
}

/// The cache file an LLM build writes beside `out`: `<out>.llm-cache.jsonl`.
pub fn llm_cache_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".llm-cache.jsonl");
    name.into()
}

/// Splits `text` into sentences: a sentence ends at `.`, `!` or `?` followed by whitespace and
/// then an uppercase letter, digit, quote or bracket, unless the word before a period is an
/// initial (`J.`), holds another period (`U.S.`) or is a common abbreviation (`Dr.`, `St.`).
/// Returns trimmed, non-empty slices of `text`, in order.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let end = i + 1;
        let rest = &text[end..];
        let after = rest.trim_start();
        if after.len() == rest.len() || after.is_empty() {
            continue; // no whitespace after, or the end of the text
        }
        let opens = after.chars().next().is_some_and(|n| {
            n.is_uppercase() || n.is_ascii_digit() || matches!(n, '"' | '\'' | '(' | '“' | '‘')
        });
        if !opens {
            continue;
        }
        if c == '.' {
            let word_start = text[..i]
                .rfind(|ch: char| ch.is_whitespace())
                .map_or(0, |w| w + 1);
            let word = text[word_start..i].trim_start_matches(['(', '"', '\'']);
            let initial = word.chars().count() == 1 && word.chars().all(char::is_uppercase);
            if initial || word.contains('.') || ABBREVIATIONS.contains(&word) {
                continue;
            }
        }
        let s = text[start..end].trim();
        if !s.is_empty() {
            out.push(s);
        }
        start = end;
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Builds a knowledge graph of `kind` (KG, TKG or RKG) over an in-memory corpus (no file is
/// written; see [`KnowledgeGraph::write`]).
///
/// # Errors
/// [`GraphError::InvalidOption`] for an option out of range or a kind that is not a KG kind;
/// [`GraphError::DuplicateId`] when two passages share an id; with an LLM,
/// [`GraphError::Llm`] when the endpoint fails for good or the cache is unreadable.
pub fn build_kg(
    passages: &[Passage],
    kind: GraphKind,
    opts: &KgOptions,
) -> Result<(KnowledgeGraph, KgStats), GraphError> {
    opts.validate(kind)?;
    let start = Instant::now();
    let linker = EntityLinker::new(
        passages.iter().map(|p| p.title.as_str()),
        opts.min_title_chars,
        opts.capitalised_spans,
    );
    let open = || Ok(passages.iter().cloned().map(Ok));
    let bar = ProgressBar::hidden();
    let (graph, mut stats) = match &opts.llm {
        Some(llm) => llm::build_core_llm(&LlmClient::new(llm)?, open, kind, opts, &bar)?,
        None => build_core(&linker, open, kind, opts, &bar)?,
    };
    stats.seconds = round3(start.elapsed().as_secs_f64());
    Ok((graph, stats))
}

/// Builds a knowledge graph of `kind` over the corpus file `corpus` (JSONL, plain or gzip) and
/// writes it to `out` atomically with [`KnowledgeGraph::write`]. Reads the corpus three times
/// (module doc).
///
/// # Errors
/// [`GraphError::Corpus`] naming the corpus file and line; [`GraphError::Exists`] when `out`
/// may not be replaced; [`GraphError::Io`] naming the file for filesystem failures;
/// [`GraphError::InvalidOption`], [`GraphError::DuplicateId`] and [`GraphError::Llm`] as for
/// [`build_kg`]. With an LLM the cache `<out>.llm-cache.jsonl` ([`llm_cache_path`]) is kept
/// after a failure, so running the build again resumes it.
pub fn build_kg_from_path(
    corpus: &Path,
    out: &Path,
    kind: GraphKind,
    opts: &KgOptions,
) -> Result<KgStats, GraphError> {
    opts.validate(kind)?;
    let start = Instant::now();
    let _span = tracing::info_span!("build_kg", kind = %kind, corpus = %corpus.display(), out = %out.display())
        .entered();
    refuse_existing(out, opts.overwrite)?;
    let bar = progress_bar(opts.progress);
    let open = || Ok(PassageReader::open(corpus)?);
    let (graph, mut stats) = match &opts.llm {
        Some(llm) => {
            let client = LlmClient::with_default_cache(llm, &llm_cache_path(out))?;
            llm::build_core_llm(&client, open, kind, opts, &bar)?
        }
        None => {
            let linker = title_linker(corpus, opts.min_title_chars, opts.capitalised_spans, &bar)?;
            build_core(&linker, open, kind, opts, &bar)?
        }
    };
    bar.set_message("writing");
    stats.bytes_on_disk = graph.write(out, opts.overwrite)?;
    bar.finish_and_clear();
    stats.seconds = round3(start.elapsed().as_secs_f64());
    tracing::info!(?stats, "built knowledge graph");
    Ok(stats)
}

/// A relation's identity while collecting: (head, tail, text).
type RelationKey = (u32, u32, String);

/// A relation being collected: its passages and every source sentence (as ids into the
/// builder's sentence store).
#[derive(Default)]
struct RelationAcc {
    passages: Vec<u32>,
    sentences: Vec<u32>,
}

/// A description being collected: sentence ids (builder store) and their word count.
#[derive(Default, Clone)]
struct DescriptionAcc {
    sentences: Vec<u32>,
    words: usize,
}

impl DescriptionAcc {
    /// Takes sentence `id` of `words` words if the caps allow it.
    fn offer(&mut self, id: u32, words: usize, opts: &KgOptions) {
        if self.sentences.last() == Some(&id) || self.sentences.len() >= opts.description_sentences
        {
            return;
        }
        if !self.sentences.is_empty() && self.words + words > opts.description_words {
            return;
        }
        self.sentences.push(id);
        self.words += words;
    }
}

/// Links every passage (document frequencies), then walks the sentences for relations and
/// descriptions. `open` yields the corpus afresh for each pass.
fn build_core<I, F>(
    linker: &EntityLinker,
    open: F,
    kind: GraphKind,
    opts: &KgOptions,
    bar: &ProgressBar,
) -> Result<(KnowledgeGraph, KgStats), GraphError>
where
    F: Fn() -> Result<I, GraphError>,
    I: Iterator<Item = Result<Passage, CorpusError>>,
{
    // Pass 1: ids and entity document frequencies.
    bar.set_position(0);
    bar.set_message("linking entities");
    let mut ids: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut df: HashMap<String, u32> = HashMap::new();
    for p in open()? {
        let p = p?;
        if !seen.insert(p.id.clone()) {
            return Err(GraphError::DuplicateId { id: p.id });
        }
        for e in linker.link(&p) {
            *df.entry(e).or_default() += 1;
        }
        ids.push(p.id);
        if ids.len().is_multiple_of(1024) {
            bar.set_position(ids.len() as u64);
        }
    }
    drop(seen);
    let too_common = df.values().filter(|&&d| d as usize > opts.max_df).count();
    let mut names: Vec<String> = df
        .into_iter()
        .filter(|&(_, d)| d as usize <= opts.max_df)
        .map(|(n, _)| n)
        .collect();
    names.sort_unstable();
    let entity_of: HashMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();

    // Pass 2: sentences, mentions, relations, descriptions.
    bar.set_position(0);
    bar.set_message("extracting relations");
    let described = kind != GraphKind::Kg;
    let rich = kind == GraphKind::Rkg;
    let mut entity_passages: Vec<Vec<u32>> = vec![Vec::new(); names.len()];
    let mut entity_desc: Vec<DescriptionAcc> = if described {
        vec![DescriptionAcc::default(); names.len()]
    } else {
        Vec::new()
    };
    let mut relations: HashMap<RelationKey, (RelationAcc, DescriptionAcc)> = HashMap::new();
    // Sentences that mention an entity (TKG/RKG), and sentence frequencies of terms (RKG).
    let mut store: Vec<String> = Vec::new();
    let mut sentence_freq: HashMap<String, u32> = HashMap::new();
    let mut total_sentences = 0u64;
    for (node, p) in open()?.enumerate() {
        let p = p?;
        let node = node as u32;
        let mut ents: Vec<(u32, &str)> = linker
            .link(&p)
            .into_iter()
            .filter_map(|n| entity_of.get_key_value(n.as_str()).map(|(k, &v)| (v, *k)))
            .collect();
        ents.sort_unstable();
        for &(e, _) in &ents {
            entity_passages[e as usize].push(node);
        }
        for sentence in split_sentences(&p.text) {
            total_sentences += 1;
            if rich {
                let distinct: HashSet<String> = text_terms(sentence).collect();
                for t in distinct {
                    *sentence_freq.entry(t).or_default() += 1;
                }
            }
            let mentions = find_mentions(sentence, &ents);
            if mentions.is_empty() {
                continue;
            }
            let sid = store.len() as u32;
            let words = sentence.split_whitespace().count();
            let mut stored = false;
            if described {
                for m in &mentions {
                    entity_desc[m.2 as usize].offer(sid, words, opts);
                }
                stored = true;
            }
            for (i, a) in mentions.iter().enumerate() {
                for b in &mentions[i + 1..] {
                    if a.2 == b.2 {
                        continue;
                    }
                    let text = relation_text(&sentence[a.1..b.0], opts.relation_words);
                    let (rel, desc) = relations.entry((a.2, b.2, text)).or_default();
                    if rel.passages.last() != Some(&node) {
                        rel.passages.push(node);
                    }
                    if rich && rel.sentences.last() != Some(&sid) {
                        rel.sentences.push(sid);
                    }
                    if described {
                        desc.offer(sid, words, opts);
                    }
                    stored |= rich;
                }
            }
            if stored {
                store.push(sentence.to_string());
            }
        }
        if node.is_multiple_of(1024) {
            bar.set_position(u64::from(node));
        }
    }

    // Assemble: relations in (head, tail, text) order; described sentences renumbered in the
    // order of first use.
    bar.set_message("assembling");
    let mut keyed: Vec<(RelationKey, (RelationAcc, DescriptionAcc))> =
        relations.into_iter().collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut renumber: HashMap<u32, u32> = HashMap::new();
    let mut sentences: Vec<String> = Vec::new();
    let mut keep = |ids: &[u32]| -> Vec<u32> {
        ids.iter()
            .map(|&s| {
                *renumber.entry(s).or_insert_with(|| {
                    sentences.push(store[s as usize].clone());
                    (sentences.len() - 1) as u32
                })
            })
            .collect()
    };
    let total = total_sentences.max(1) as f64;
    let mut entities: Vec<Entity> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let description = if described {
            keep(&entity_desc[i].sentences)
        } else {
            Vec::new()
        };
        entities.push(Entity {
            name: name.clone(),
            passages: std::mem::take(&mut entity_passages[i]),
            description,
        });
    }
    let mut out_relations: Vec<Relation> = Vec::with_capacity(keyed.len());
    for ((head, tail, text), (acc, desc)) in keyed {
        let keywords = if rich {
            let own: HashSet<String> = text_terms(&names[head as usize])
                .chain(text_terms(&names[tail as usize]))
                .collect();
            top_keywords(
                &acc.sentences,
                &store,
                &sentence_freq,
                total,
                &own,
                opts.keywords,
            )
        } else {
            Vec::new()
        };
        out_relations.push(Relation {
            head,
            tail,
            text,
            passages: acc.passages,
            description: if described {
                keep(&desc.sentences)
            } else {
                Vec::new()
            },
            keywords,
        });
    }
    let graph = KnowledgeGraph::new(kind, ids, entities, out_relations, sentences);
    let stats = graph_stats(&graph, kind, total_sentences, too_common);
    Ok((graph, stats))
}

/// The statistics of a built graph (time, size and LLM counts left at 0).
fn graph_stats(
    graph: &KnowledgeGraph,
    kind: GraphKind,
    total_sentences: u64,
    too_common: usize,
) -> KgStats {
    let mut in_relation = vec![false; graph.entities().len()];
    for r in graph.relations() {
        in_relation[r.head as usize] = true;
        in_relation[r.tail as usize] = true;
    }
    KgStats {
        kind,
        passages: graph.num_passages() as u64,
        sentences: total_sentences,
        entities: graph.entities().len() as u64,
        entities_too_common: too_common as u64,
        relations: graph.relations().len() as u64,
        entity_pairs: graph.num_entity_pairs() as u64,
        isolated_entities: in_relation.iter().filter(|&&b| !b).count() as u64,
        description_sentences: graph.sentences().len() as u64,
        seconds: 0.0,
        bytes_on_disk: 0,
        llm_requests: 0,
        llm_cached: 0,
        llm_retries: 0,
        llm_failures: 0,
    }
}

/// The top `k` TF-IDF terms of the sentences `ids` (module doc), excluding `own`.
fn top_keywords(
    ids: &[u32],
    store: &[String],
    sentence_freq: &HashMap<String, u32>,
    total: f64,
    own: &HashSet<String>,
    k: usize,
) -> Vec<String> {
    let mut tf: HashMap<String, u32> = HashMap::new();
    for &s in ids {
        for t in text_terms(&store[s as usize]) {
            if !own.contains(&t) {
                *tf.entry(t).or_default() += 1;
            }
        }
    }
    let mut scored: Vec<(f64, String)> = tf
        .into_iter()
        .map(|(t, n)| {
            let sf = f64::from(sentence_freq.get(&t).copied().unwrap_or(1).max(1));
            (f64::from(n) * (total / sf).ln(), t)
        })
        .filter(|(s, _)| *s > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, t)| t).collect()
}

/// Whole-word occurrences of the passage's entities in `sentence` as `(start, end, entity)`,
/// leftmost-longest and non-overlapping, in order.
fn find_mentions(sentence: &str, ents: &[(u32, &str)]) -> Vec<(usize, usize, u32)> {
    let mut found: Vec<(usize, usize, u32)> = Vec::new();
    for &(e, name) in ents {
        if name.is_empty() {
            continue;
        }
        for (at, _) in sentence.match_indices(name) {
            let end = at + name.len();
            let before = sentence[..at].chars().next_back();
            let after = sentence[end..].chars().next();
            if !before.is_some_and(char::is_alphanumeric)
                && !after.is_some_and(char::is_alphanumeric)
            {
                found.push((at, end, e));
            }
        }
    }
    // Leftmost first; at one start the longest first.
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(usize, usize, u32)> = Vec::with_capacity(found.len());
    for m in found {
        if out.last().is_none_or(|last| m.0 >= last.1) {
            out.push(m);
        }
    }
    out
}

/// The words between two mentions, trimmed of surrounding punctuation, at most `cap` words.
fn relation_text(between: &str, cap: usize) -> String {
    let trimmed = between.trim_matches(|c: char| !c.is_alphanumeric());
    trimmed
        .split_whitespace()
        .take(cap)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .to_string()
}
