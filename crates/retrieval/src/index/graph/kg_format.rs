//! The knowledge-graph container (KG, TKG and RKG of DESIGN §6, arXiv 2503.04338), format
//! version 1. All integers little-endian.
//!
//! A KG is not a passage graph with extra weights: its nodes are entities, its edges relations,
//! and both carry variable-length data (names, relation texts, passage lists, descriptions,
//! keywords). So it has its own magic and version rather than stretching the passage-graph
//! container; the kind codes are shared with it ([`GraphKind::code`]).
//!
//! ```text
//! offset  size          field
//! 0       8             magic  b"SLEUTHKG"
//! 8       4             format version (u32) = 1
//! 12      4             kind (u32): 3 = KG, 4 = textual KG, 5 = rich KG
//! 16      8             P: passages (u64)
//! 24      8             E: entities (u64)
//! 32      8             R: relations (u64)
//! 40      8             S: description sentences (u64); 0 for a KG
//! 48      8             bytes of passage ids (u64)
//! 56      8             bytes of entity names (u64)
//! 64      8             entries of entity passage lists (u64)
//! 72      8             bytes of relation texts (u64)
//! 80      8             entries of relation passage lists (u64)
//! 88      8             bytes of sentences (u64); 0 for a KG
//! 96      8             entries of entity descriptions (u64); 0 for a KG
//! 104     8             entries of relation descriptions (u64); 0 for a KG
//! 112     8             bytes of relation keywords (u64); 0 unless RKG
//! 120     4             CRC-32 (IEEE) of everything after the header (u32)
//! 124     4             reserved, zero
//! 128     …             body: the sections below, in this order
//! ```
//!
//! A *string table* of `n` strings is `8·(n+1)` bytes of u64 offsets into a UTF-8 blob, then the
//! blob (string `i` is `blob[off[i]..off[i+1]]`). A *list table* of `n` lists is `8·(n+1)` bytes
//! of u64 offsets into a u32 array, then the array (list `i` is `values[off[i]..off[i+1]]`).
//!
//! | # | section | shape | kinds |
//! |---|---|---|---|
//! | 1 | passage ids, in node order (the corpus order) | string table, P | all |
//! | 2 | entity names, ascending and unique | string table, E | all |
//! | 3 | passages of each entity, ascending node ids `< P` | list table, E | all |
//! | 4 | head and tail entity of each relation | `2·R` u32 (head, tail pairs) | all |
//! | 5 | relation texts (the words between head and tail) | string table, R | all |
//! | 6 | passages of each relation, ascending node ids `< P` | list table, R | all |
//! | 7 | description sentences | string table, S | TKG, RKG |
//! | 8 | description of each entity: sentence ids `< S` | list table, E | TKG, RKG |
//! | 9 | description of each relation: sentence ids `< S` | list table, R | TKG, RKG |
//! | 10 | keywords of each relation, joined by one space | string table, R | RKG |
//!
//! Descriptions refer to a shared sentence table because one sentence describes every entity
//! and relation it mentions: storing the text once keeps a TKG about the size of the corpus.
//!
//! As for passage graphs, the size follows from the header, so truncation is caught before
//! parsing, the CRC catches flipped bytes, and structural checks (offsets, ranges, order,
//! UTF-8, head ≠ tail, absent sections empty) catch what a writer bug would leave behind.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::Path;

use super::container::{
    at, corruption, image, index_ids, put, put_lists, put_strings, read_image, write_atomic,
    Container, Cursor, Header,
};
use super::{GraphError, GraphKind};

/// The first eight bytes of every sleuth knowledge-graph file.
pub const KG_MAGIC: [u8; 8] = *b"SLEUTHKG";
/// The knowledge-graph format version this build writes and reads.
pub const KG_FORMAT_VERSION: u32 = 1;

/// An entity node: a name found by the entity linker and the passages it was linked in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Surface string, e.g. `Andy Reid`.
    pub name: String,
    /// Nodes (indices into the passage table) of the passages it was linked in, ascending.
    pub passages: Vec<u32>,
    /// TKG/RKG: ids of the sentences that describe it (in the graph's sentence table), in
    /// corpus order; empty for a KG.
    pub description: Vec<u32>,
}

/// A relation edge: two entities mentioned in one sentence, and the words between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The entity mentioned first in the sentence.
    pub head: u32,
    /// The entity mentioned second.
    pub tail: u32,
    /// The words between the two mentions, trimmed of punctuation at both ends and capped in
    /// length (may be empty, e.g. for `Paris, France`).
    pub text: String,
    /// Nodes of the passages holding a sentence with this relation, ascending.
    pub passages: Vec<u32>,
    /// TKG/RKG: ids of the sentences that describe it; empty for a KG.
    pub description: Vec<u32>,
    /// RKG: the top TF-IDF terms of its source sentences, best first; empty otherwise.
    pub keywords: Vec<String>,
}

/// A knowledge graph over the passages of a corpus (KG, textual KG or rich KG), loaded from or
/// written to one file (format in the module doc). Entity ids index [`KnowledgeGraph::entities`],
/// passage nodes index the passage table ([`KnowledgeGraph::passage_id`]), sentence ids index
/// [`KnowledgeGraph::sentences`].
#[derive(Debug, Clone, PartialEq)]
pub struct KnowledgeGraph {
    kind: GraphKind,
    passage_ids: Vec<String>,
    entities: Vec<Entity>,
    relations: Vec<Relation>,
    sentences: Vec<String>,
    by_name: HashMap<String, u32>,
    by_passage: HashMap<String, u32>,
}

impl KnowledgeGraph {
    /// Assembles a graph from its parts.
    ///
    /// # Panics
    /// On inconsistent parts, which are builder bugs rather than data errors: a kind that is not
    /// a KG kind, entity names not ascending and unique, a passage, entity or sentence id out of
    /// range, a relation from an entity to itself, descriptions in a KG or keywords outside an
    /// RKG.
    pub fn new(
        kind: GraphKind,
        passage_ids: Vec<String>,
        entities: Vec<Entity>,
        relations: Vec<Relation>,
        sentences: Vec<String>,
    ) -> Self {
        let graph = Self {
            kind,
            by_name: index_names(&entities),
            by_passage: index_ids(&passage_ids),
            passage_ids,
            entities,
            relations,
            sentences,
        };
        if let Err(reason) = graph.check() {
            panic!("inconsistent knowledge graph: {reason}");
        }
        graph
    }

    /// Which construction built the graph ([`GraphKind::Kg`], [`GraphKind::Tkg`] or
    /// [`GraphKind::Rkg`]).
    pub fn kind(&self) -> GraphKind {
        self.kind
    }

    /// Number of passages in the passage table (the corpus it was built from).
    pub fn num_passages(&self) -> usize {
        self.passage_ids.len()
    }

    /// The corpus id of passage node `node`.
    ///
    /// # Panics
    /// When `node` is out of range.
    pub fn passage_id(&self, node: u32) -> &str {
        at(&self.passage_ids, node as usize, "passage node").as_str()
    }

    /// The node of passage id `id`, if the graph has it.
    pub fn passage_node(&self, id: &str) -> Option<u32> {
        self.by_passage.get(id).copied()
    }

    /// Entity nodes, sorted by name.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    /// Relation edges, sorted by (head, tail, text).
    pub fn relations(&self) -> &[Relation] {
        &self.relations
    }

    /// The description sentences (TKG, RKG; empty for a KG).
    pub fn sentences(&self) -> &[String] {
        &self.sentences
    }

    /// The id of the entity named `name`, if the graph has it.
    pub fn entity_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// An entity's description: its sentences joined by a space (empty for a KG).
    ///
    /// # Panics
    /// When `entity` is out of range.
    pub fn entity_description(&self, entity: u32) -> String {
        self.join_sentences(&at(&self.entities, entity as usize, "entity").description)
    }

    /// A relation's description: its sentences joined by a space (empty for a KG).
    ///
    /// # Panics
    /// When `relation` is out of range.
    pub fn relation_description(&self, relation: usize) -> String {
        self.join_sentences(&at(&self.relations, relation, "relation").description)
    }

    /// Sentence ids are `< S` by the invariants ([`KnowledgeGraph::check`]), so none is skipped.
    fn join_sentences(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&s| self.sentences.get(s as usize).map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The undirected entity graph the relations induce, as adjacency lists: `out[e]` holds
    /// `(neighbour, weight)` pairs, ascending by neighbour, where the weight is the number of
    /// (relation, source passage) pairs joining the two entities in either direction.
    pub fn entity_adjacency(&self) -> Vec<Vec<(u32, f32)>> {
        let mut pairs: HashMap<(u32, u32), f32> = HashMap::new();
        for r in &self.relations {
            let key = (r.head.min(r.tail), r.head.max(r.tail));
            *pairs.entry(key).or_default() += r.passages.len().max(1) as f32;
        }
        let mut adjacency = vec![Vec::new(); self.entities.len()];
        // Heads and tails are `< E` by the invariants ([`KnowledgeGraph::check`]).
        for ((a, b), w) in pairs {
            if let Some(row) = adjacency.get_mut(a as usize) {
                row.push((b, w));
            }
            if let Some(row) = adjacency.get_mut(b as usize) {
                row.push((a, w));
            }
        }
        for row in &mut adjacency {
            row.sort_by_key(|&(t, _)| t);
        }
        adjacency
    }

    /// Number of distinct unordered entity pairs joined by at least one relation.
    pub fn num_entity_pairs(&self) -> usize {
        let mut pairs: Vec<(u32, u32)> = self
            .relations
            .iter()
            .map(|r| (r.head.min(r.tail), r.head.max(r.tail)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs.len()
    }

    /// The file image: header and body (format in the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let passage_bytes = put_strings(&mut body, self.passage_ids.iter().map(String::as_str));
        let name_bytes = put_strings(&mut body, self.entities.iter().map(|e| e.name.as_str()));
        let entity_passages = put_lists(&mut body, self.entities.iter().map(|e| &e.passages[..]));
        let ends = self.relations.iter().flat_map(|r| [r.head, r.tail]);
        put(&mut body, ends, u32::to_le_bytes);
        let text_bytes = put_strings(&mut body, self.relations.iter().map(|r| r.text.as_str()));
        let relation_passages =
            put_lists(&mut body, self.relations.iter().map(|r| &r.passages[..]));
        let described = self.kind != GraphKind::Kg;
        let (mut sentence_bytes, mut entity_desc, mut relation_desc, mut keyword_bytes) =
            (0, 0, 0, 0);
        if described {
            sentence_bytes = put_strings(&mut body, self.sentences.iter().map(String::as_str));
            entity_desc = put_lists(&mut body, self.entities.iter().map(|e| &e.description[..]));
            relation_desc = put_lists(&mut body, self.relations.iter().map(|r| &r.description[..]));
        }
        if self.kind == GraphKind::Rkg {
            let joined: Vec<String> = self
                .relations
                .iter()
                .map(|r| r.keywords.join(" "))
                .collect();
            keyword_bytes = put_strings(&mut body, joined.iter().map(String::as_str));
        }
        let counts = [
            self.passage_ids.len() as u64,
            self.entities.len() as u64,
            self.relations.len() as u64,
            self.sentences.len() as u64,
            passage_bytes,
            name_bytes,
            entity_passages,
            text_bytes,
            relation_passages,
            sentence_bytes,
            entity_desc,
            relation_desc,
            keyword_bytes,
        ];
        image(Container::Knowledge, self.kind, counts, 0, &body)
    }

    /// Writes the graph to `path` atomically (a hidden temporary file beside it, synced, then
    /// renamed over `path`). Returns the bytes written. An existing `path` is replaced only with
    /// `overwrite`, and only if it is a sleuth graph file.
    ///
    /// # Errors
    /// [`GraphError::Exists`] when `path` may not be replaced; [`GraphError::Io`] naming the
    /// file for filesystem failures.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<u64, GraphError> {
        write_atomic(path, &self.to_bytes(), overwrite)
    }

    /// Reads a file written by [`KnowledgeGraph::write`].
    ///
    /// # Errors
    /// All name `path`: [`GraphError::Io`] when it cannot be read, [`GraphError::WrongKind`] for
    /// a passage-graph or tree file, [`GraphError::NotAGraph`] for any other wrong magic,
    /// [`GraphError::UnsupportedVersion`], [`GraphError::Truncated`] when the size disagrees
    /// with the header, [`GraphError::Corrupt`] for a checksum mismatch or inconsistent content.
    pub fn read(path: &Path) -> Result<Self, GraphError> {
        Self::from_bytes(&read_image(path)?, path)
    }

    /// Parses a file image; `path` is only used in errors.
    ///
    /// # Errors
    /// As [`KnowledgeGraph::read`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, GraphError> {
        let header = Header::<13>::read(bytes, path, Container::Knowledge)?;
        let corrupt = corruption(path);
        let kind = match GraphKind::from_code(header.kind) {
            Some(k) if k.is_knowledge_graph() => k,
            _ => {
                return Err(corrupt(format!(
                    "unknown knowledge-graph kind {}",
                    header.kind
                )))
            }
        };
        let [p, e, r, s, pb, nb, ep, tb, rp, sb, ed, rd, kb] = header.counts;
        let described = kind != GraphKind::Kg;
        // Section sizes in u128 so that absurd counts in a damaged header cannot overflow.
        let (p, e, r, s) = (p as u128, e as u128, r as u128, s as u128);
        let strings = |n: u128, b: u64| 8 * (n + 1) + u128::from(b);
        let lists = |n: u128, v: u64| 8 * (n + 1) + 4 * u128::from(v);
        let mut expected = Header::<13>::BYTES as u128
            + strings(p, pb)
            + strings(e, nb)
            + lists(e, ep)
            + 8 * r
            + strings(r, tb)
            + lists(r, rp);
        if described {
            expected += strings(s, sb) + lists(e, ed) + lists(r, rd);
        }
        if kind == GraphKind::Rkg {
            expected += strings(r, kb);
        }
        header.check_len(expected)?;
        if !described && (s, sb, ed, rd) != (0, 0, 0, 0) {
            return Err(corrupt("a KG header has description sections".into()));
        }
        if kind != GraphKind::Rkg && kb != 0 {
            return Err(corrupt("keywords outside a rich KG".into()));
        }
        if [p, e, s].iter().any(|&n| n >= u128::from(u32::MAX)) {
            return Err(corrupt("counts exceed the u32 id range".into()));
        }
        let mut cur = Cursor::new(header.body()?);
        let (p, e, r, s) = (p as usize, e as usize, r as usize, s as usize);
        let passage_ids = cur.strings(p, pb, "passage ids").map_err(corrupt)?;
        let names = cur.strings(e, nb, "entity names").map_err(corrupt)?;
        let entity_passages = cur.lists(e, ep, "entity passages").map_err(corrupt)?;
        let ends: Vec<u32> = cur.u32s(2 * r, "relation ends").map_err(corrupt)?;
        let texts = cur.strings(r, tb, "relation texts").map_err(corrupt)?;
        let relation_passages = cur.lists(r, rp, "relation passages").map_err(corrupt)?;
        let (mut sentences, mut entity_desc, mut relation_desc) =
            (Vec::new(), vec![Vec::new(); e], vec![Vec::new(); r]);
        if described {
            sentences = cur.strings(s, sb, "sentences").map_err(corrupt)?;
            entity_desc = cur.lists(e, ed, "entity descriptions").map_err(corrupt)?;
            relation_desc = cur.lists(r, rd, "relation descriptions").map_err(corrupt)?;
        }
        let keywords: Vec<Vec<String>> = if kind == GraphKind::Rkg {
            cur.strings(r, kb, "keywords")
                .map_err(corrupt)?
                .into_iter()
                .map(|k| k.split_whitespace().map(str::to_string).collect())
                .collect()
        } else {
            vec![Vec::new(); r]
        };
        let entities: Vec<Entity> = names
            .into_iter()
            .zip(entity_passages)
            .zip(entity_desc)
            .map(|((name, passages), description)| Entity {
                name,
                passages,
                description,
            })
            .collect();
        // The cursor read exactly `2·R` ends, so there is one pair per relation.
        let relations: Vec<Relation> = texts
            .into_iter()
            .zip(relation_passages)
            .zip(relation_desc.into_iter().zip(keywords))
            .zip(
                ends.chunks_exact(2)
                    .filter_map(|pair| <[u32; 2]>::try_from(pair).ok()),
            )
            .map(
                |(((text, passages), (description, keywords)), [head, tail])| Relation {
                    head,
                    tail,
                    text,
                    passages,
                    description,
                    keywords,
                },
            )
            .collect();
        let graph = Self {
            kind,
            by_name: index_names(&entities),
            by_passage: index_ids(&passage_ids),
            passage_ids,
            entities,
            relations,
            sentences,
        };
        graph.check().map_err(corrupt)?;
        Ok(graph)
    }

    /// The structural invariants of the module doc.
    fn check(&self) -> Result<(), String> {
        if !self.kind.is_knowledge_graph() {
            return Err(format!("kind {} is not a knowledge graph", self.kind));
        }
        let (p, e, s) = (
            self.passage_ids.len(),
            self.entities.len(),
            self.sentences.len(),
        );
        let described = self.kind != GraphKind::Kg;
        let ascending_below = |list: &[u32], n: usize| {
            list.iter().zip(list.iter().skip(1)).all(|(a, b)| a < b)
                && list.last().is_none_or(|&x| (x as usize) < n)
        };
        let mut previous: Option<&str> = None;
        for (i, ent) in self.entities.iter().enumerate() {
            if previous.is_some_and(|prev| prev >= ent.name.as_str()) {
                return Err(format!("entity names are not ascending at entity {i}"));
            }
            previous = Some(&ent.name);
            if !ascending_below(&ent.passages, p) {
                return Err(format!(
                    "passages of entity {i} are not ascending below {p}"
                ));
            }
            if ent.description.iter().any(|&x| x as usize >= s) {
                return Err(format!("entity {i} refers to a sentence beyond {s}"));
            }
            if !described && !ent.description.is_empty() {
                return Err(format!("entity {i} has a description in a KG"));
            }
        }
        for (i, rel) in self.relations.iter().enumerate() {
            if rel.head as usize >= e || rel.tail as usize >= e || rel.head == rel.tail {
                return Err(format!(
                    "relation {i} joins entities {} and {} (there are {e})",
                    rel.head, rel.tail
                ));
            }
            if !ascending_below(&rel.passages, p) {
                return Err(format!(
                    "passages of relation {i} are not ascending below {p}"
                ));
            }
            if rel.description.iter().any(|&x| x as usize >= s) {
                return Err(format!("relation {i} refers to a sentence beyond {s}"));
            }
            if !described && !rel.description.is_empty() {
                return Err(format!("relation {i} has a description in a KG"));
            }
            if self.kind != GraphKind::Rkg && !rel.keywords.is_empty() {
                return Err(format!("relation {i} has keywords outside a rich KG"));
            }
            if rel
                .keywords
                .iter()
                .any(|k| k.is_empty() || k.contains(char::is_whitespace))
            {
                return Err(format!("relation {i} has an empty or spaced keyword"));
            }
        }
        if self.by_passage.len() != p {
            return Err("passage ids are not unique".into());
        }
        if !described && s > 0 {
            return Err("a KG holds description sentences".into());
        }
        Ok(())
    }
}

fn index_names(entities: &[Entity]) -> HashMap<String, u32> {
    entities
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.clone(), i as u32))
        .collect()
}
