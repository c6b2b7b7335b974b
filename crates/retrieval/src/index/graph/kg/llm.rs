//! The KG builder's LLM path: entities and relations from extraction replies
//! ([`crate::llm::LlmClient::extract_all`]) instead of sentence co-occurrence.
//!
//! - **Entities** are the names a passage's reply lists, plus the ends of its relations. A name
//!   is trimmed and its whitespace collapsed; names equal up to case are one entity, shown as
//!   first written (in corpus order). An entity lists every passage whose reply named it; one
//!   named in more than [`KgOptions::max_df`] passages is dropped with its relations, as in the
//!   LLM-free path.
//! - **Relations** are `(source, target, relation)` triples; the relation's words are
//!   normalised like names and cut to [`KgOptions::relation_words`] words, and triples equal up
//!   to the case of those words are one relation. A relation from an entity to itself is
//!   dropped.
//! - **Descriptions** (TKG, RKG): the replies' descriptions of an entity or relation, in corpus
//!   order, repeats dropped, capped like sentence descriptions
//!   ([`KgOptions::description_sentences`] entries, [`KgOptions::description_words`] words,
//!   the first always kept). Each description is an entry of the graph's sentence table, so
//!   the file format is unchanged.
//! - **Keywords** (RKG): the replies' keywords, split into the lowercased terms of
//!   [`text_terms`] (the words queries are matched on, and the format stores keywords without
//!   spaces), in reply order, repeats dropped, at most [`KgOptions::keywords`].
//!
//! One prompt serves every kind, so KG, TKG and RKG builds share a cache. A reply that does not
//! parse leaves its passage without entities (counted in [`KgStats::llm_failures`]).

use std::collections::{HashMap, HashSet};

use indicatif::ProgressBar;

use super::{graph_stats, split_sentences, text_terms, KgOptions, KgStats};
use crate::corpus::{CorpusError, Passage};
use crate::index::graph::{Entity, GraphError, GraphKind, KnowledgeGraph, Relation};
use crate::llm::LlmClient;

/// Passages sent to the client per batch: enough to keep `concurrency` requests busy, few
/// enough that the corpus is never held in memory.
const BATCH: usize = 256;

/// An entity being collected.
struct EntityAcc {
    name: String,
    passages: Vec<u32>,
    descriptions: Vec<String>,
}

/// A relation being collected.
struct RelationAcc {
    text: String,
    passages: Vec<u32>,
    descriptions: Vec<String>,
    keywords: Vec<String>,
}

/// Trimmed, whitespace collapsed to single spaces.
fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Everything collected from the replies.
#[derive(Default)]
struct Collected {
    entities: Vec<EntityAcc>,
    by_key: HashMap<String, usize>,
    relations: Vec<RelationAcc>,
    relation_ends: Vec<(usize, usize)>,
    relation_by_key: HashMap<(usize, usize, String), usize>,
}

impl Collected {
    /// The entity named `name` (normalised, case-insensitive), created when new, with `node`
    /// added to its passages; `None` for an empty name.
    fn entity(&mut self, name: &str, node: u32) -> Option<usize> {
        let name = normalise(name);
        if name.is_empty() {
            return None;
        }
        let key = name.to_lowercase();
        let id = *self.by_key.entry(key).or_insert_with(|| {
            self.entities.push(EntityAcc {
                name,
                passages: Vec::new(),
                descriptions: Vec::new(),
            });
            self.entities.len() - 1
        });
        let e = &mut self.entities[id];
        if e.passages.last() != Some(&node) {
            e.passages.push(node);
        }
        Some(id)
    }
}

/// Adds `text` (normalised) to `list` unless empty or already there.
fn push_description(list: &mut Vec<String>, text: &str) {
    let text = normalise(text);
    if !text.is_empty() && !list.contains(&text) {
        list.push(text);
    }
}

/// Builds the graph from LLM replies, reading the corpus once (module doc). `open` yields the
/// corpus.
pub(super) fn build_core_llm<I, F>(
    client: &LlmClient,
    open: F,
    kind: GraphKind,
    opts: &KgOptions,
    bar: &ProgressBar,
) -> Result<(KnowledgeGraph, KgStats), GraphError>
where
    F: Fn() -> Result<I, GraphError>,
    I: Iterator<Item = Result<Passage, CorpusError>>,
{
    bar.set_position(0);
    bar.set_message("LLM extraction");
    let mut ids: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut total_sentences = 0u64;
    let mut got = Collected::default();
    let mut batch: Vec<Passage> = Vec::with_capacity(BATCH);
    let mut passages = open()?;
    loop {
        let next = passages.next().transpose()?;
        let done = next.is_none();
        if let Some(p) = next {
            if !seen.insert(p.id.clone()) {
                return Err(GraphError::DuplicateId { id: p.id });
            }
            total_sentences += split_sentences(&p.text).len() as u64;
            batch.push(p);
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            let first = ids.len() as u32;
            let replies = client.extract_all(&batch)?;
            for (i, (p, reply)) in batch.drain(..).zip(replies).enumerate() {
                ids.push(p.id);
                if let Ok(x) = reply {
                    add_reply(&mut got, &x, first + i as u32, opts);
                }
            }
            bar.set_position(ids.len() as u64);
        }
        if done {
            break;
        }
    }
    let (graph, too_common) = assemble(got, ids, kind, opts);
    let mut stats = graph_stats(&graph, kind, total_sentences, too_common);
    let llm = client.stats();
    stats.llm_requests = llm.requests;
    stats.llm_cached = llm.cached;
    stats.llm_retries = llm.retries;
    stats.llm_failures = llm.failures;
    Ok((graph, stats))
}

/// Adds one passage's extraction.
fn add_reply(got: &mut Collected, x: &crate::llm::Extraction, node: u32, opts: &KgOptions) {
    for e in &x.entities {
        if let Some(id) = got.entity(&e.name, node) {
            push_description(&mut got.entities[id].descriptions, &e.description);
        }
    }
    for r in &x.relations {
        let (Some(s), Some(t)) = (got.entity(&r.source, node), got.entity(&r.target, node)) else {
            continue;
        };
        if s == t {
            continue;
        }
        let text = normalise(&r.relation)
            .split(' ')
            .take(opts.relation_words)
            .collect::<Vec<_>>()
            .join(" ");
        let key = (s, t, text.to_lowercase());
        let id = match got.relation_by_key.get(&key) {
            Some(&id) => id,
            None => {
                got.relations.push(RelationAcc {
                    text,
                    passages: Vec::new(),
                    descriptions: Vec::new(),
                    keywords: Vec::new(),
                });
                got.relation_ends.push((s, t));
                got.relation_by_key.insert(key, got.relations.len() - 1);
                got.relations.len() - 1
            }
        };
        let rel = &mut got.relations[id];
        if rel.passages.last() != Some(&node) {
            rel.passages.push(node);
        }
        push_description(&mut rel.descriptions, &r.description);
        for k in &r.keywords {
            for term in text_terms(k) {
                if !rel.keywords.contains(&term) {
                    rel.keywords.push(term);
                }
            }
        }
    }
}

/// The capped description of `list`: entries in order while within the caps, the first
/// always.
fn capped<'a>(list: &'a [String], opts: &KgOptions) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut words = 0;
    for d in list {
        if out.len() >= opts.description_sentences {
            break;
        }
        let n = d.split_whitespace().count();
        if !out.is_empty() && words + n > opts.description_words {
            break;
        }
        out.push(d.as_str());
        words += n;
    }
    out
}

/// The graph from what was collected, and the number of entities dropped by `max_df`.
fn assemble(
    got: Collected,
    ids: Vec<String>,
    kind: GraphKind,
    opts: &KgOptions,
) -> (KnowledgeGraph, usize) {
    let described = kind != GraphKind::Kg;
    let rich = kind == GraphKind::Rkg;
    let keep: Vec<bool> = got
        .entities
        .iter()
        .map(|e| e.passages.len() <= opts.max_df)
        .collect();
    let too_common = keep.iter().filter(|&&k| !k).count();
    let mut order: Vec<usize> = (0..got.entities.len()).filter(|&i| keep[i]).collect();
    order.sort_unstable_by(|&a, &b| got.entities[a].name.cmp(&got.entities[b].name));
    let mut new_id = vec![u32::MAX; got.entities.len()];
    for (n, &old) in order.iter().enumerate() {
        new_id[old] = n as u32;
    }
    let mut sentences: Vec<String> = Vec::new();
    let mut sentence_id: HashMap<String, u32> = HashMap::new();
    let mut store = |list: &[String]| -> Vec<u32> {
        capped(list, opts)
            .into_iter()
            .map(|d| {
                *sentence_id.entry(d.to_string()).or_insert_with(|| {
                    sentences.push(d.to_string());
                    (sentences.len() - 1) as u32
                })
            })
            .collect()
    };
    let mut entities: Vec<Entity> = Vec::with_capacity(order.len());
    let mut accs: Vec<Option<EntityAcc>> = got.entities.into_iter().map(Some).collect();
    for &old in &order {
        let acc = accs[old].take().expect("each entity is placed once");
        entities.push(Entity {
            description: if described {
                store(&acc.descriptions)
            } else {
                Vec::new()
            },
            name: acc.name,
            passages: acc.passages,
        });
    }
    let mut relations: Vec<(u32, u32, RelationAcc)> = got
        .relations
        .into_iter()
        .zip(got.relation_ends)
        .filter(|(_, (s, t))| keep[*s] && keep[*t])
        .map(|(r, (s, t))| (new_id[s], new_id[t], r))
        .collect();
    relations.sort_by(|a, b| (a.0, a.1, &a.2.text).cmp(&(b.0, b.1, &b.2.text)));
    let relations: Vec<Relation> = relations
        .into_iter()
        .map(|(head, tail, acc)| Relation {
            head,
            tail,
            description: if described {
                store(&acc.descriptions)
            } else {
                Vec::new()
            },
            keywords: if rich {
                acc.keywords.into_iter().take(opts.keywords).collect()
            } else {
                Vec::new()
            },
            text: acc.text,
            passages: acc.passages,
        })
        .collect();
    (
        KnowledgeGraph::new(kind, ids, entities, relations, sentences),
        too_common,
    )
}
