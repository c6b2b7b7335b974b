//! The prompts sleuth sends, written for this project, and the readers of their replies.
//!
//! Each prompt has a version string that is part of the cache key: changing a prompt's wording
//! must change its version, so stale cached replies are not reused for it.

use serde_json::Value;

use super::json::{head, parse_lenient, strip_fences, JsonReplyError};

/// Version of [`extraction_prompt`] (part of the cache key).
pub const EXTRACTION_PROMPT_VERSION: &str = "extract-v1";
/// Version of [`summary_prompt`] (part of the cache key).
pub const SUMMARY_PROMPT_VERSION: &str = "summary-v1";
/// Version of [`judge_prompt`] (part of the cache key).
pub const JUDGE_PROMPT_VERSION: &str = "judge-v1";

/// System message of the extraction prompt.
const EXTRACTION_SYSTEM: &str = "You build a knowledge graph from encyclopedia text. \
You answer with one JSON object and nothing else.";

/// System message of the summary prompt.
const SUMMARY_SYSTEM: &str = "You write short, factual summaries of encyclopedia text. \
You keep names, dates and numbers exactly as written.";

/// System message of the judge prompt.
const JUDGE_SYSTEM: &str = "You grade answers to quiz questions against a reference answer. \
You reply with a single word: True or False.";

/// A chat prompt: a system message and a user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Part of the cache key; see the module doc.
    pub version: &'static str,
    /// The system message.
    pub system: String,
    /// The user message.
    pub user: String,
}

impl Prompt {
    /// The text hashed into the cache key: system and user message.
    pub(crate) fn key_text(&self) -> String {
        format!("{}\n\n{}", self.system, self.user)
    }
}

/// The extraction prompt for one passage: asks for the named things in the passage and the
/// facts linking them, as
/// `{"entities":[{"name","description"}],"relations":[{"source","target","relation","description","keywords":[…]}]}`.
pub fn extraction_prompt(title: &str, text: &str) -> Prompt {
    let user = format!(
        "Read the passage below and list what it is about.\n\
\n\
Entities: every person, place, organisation, work, event or other named thing the passage \
mentions. Give each a \"name\" exactly as the passage writes it and a one-sentence \
\"description\" saying what the passage tells about it.\n\
\n\
Relations: every fact the passage states that links two of those entities. Give the \
\"source\" and \"target\" entity names, a \"relation\" of a few words read from source to \
target (for example \"was born in\"), a one-sentence \"description\" of the fact, and two to \
five \"keywords\" (single words or short phrases) that a reader searching for this fact \
might type.\n\
\n\
Answer with JSON only, in this shape:\n\
{{\"entities\": [{{\"name\": \"...\", \"description\": \"...\"}}], \
\"relations\": [{{\"source\": \"...\", \"target\": \"...\", \"relation\": \"...\", \
\"description\": \"...\", \"keywords\": [\"...\"]}}]}}\n\
\n\
Title: {title}\n\
Passage: {text}"
    );
    Prompt {
        version: EXTRACTION_PROMPT_VERSION,
        system: EXTRACTION_SYSTEM.to_string(),
        user,
    }
}

/// The summary prompt for a group of texts (one RAPTOR cluster): asks for one paragraph of at
/// most `max_words` words, as plain text (a `{"summary": …}` reply is accepted too).
pub fn summary_prompt(texts: &[&str], max_words: usize) -> Prompt {
    let mut user = format!(
        "The texts below belong together. Write one paragraph of at most {max_words} words that \
says what they have in common and the most important facts they give. Answer with the \
paragraph only.\n"
    );
    for (i, t) in texts.iter().enumerate() {
        user.push_str(&format!("\nText {}: {}", i + 1, t.trim()));
    }
    Prompt {
        version: SUMMARY_PROMPT_VERSION,
        system: SUMMARY_SYSTEM.to_string(),
        user,
    }
}

/// The LLM-judge prompt (R1-Searcher's ACC_L, in our own words): is `prediction` a correct
/// answer to `question`, given the reference answers `golds`? The reply must be the single
/// word `True` or `False` (`sleuth::eval::parse_verdict` reads it strictly). Several golds
/// are listed as alternatives, any of which counts.
pub fn judge_prompt(question: &str, golds: &[String], prediction: &str) -> Prompt {
    let reference = match golds {
        [one] => one.trim().to_string(),
        many => many
            .iter()
            .map(|g| format!("\"{}\"", g.trim()))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let user = format!(
        "Decide whether the proposed answer to the question below is correct. Count it as \
correct when it means the same as the reference answer and carries the same key facts (a \
different wording, spelling or level of detail is fine); count it as wrong when it names \
something else, leaves the key fact out, or hedges between several answers.\n\n\
Question: {question}\nReference answer: {reference}\nProposed answer: {prediction}\n\n\
Reply True if the proposed answer is correct and False otherwise.",
        question = question.trim(),
        prediction = prediction.trim(),
    );
    Prompt {
        version: JUDGE_PROMPT_VERSION,
        system: JUDGE_SYSTEM.to_string(),
        user,
    }
}

/// An entity named in an extraction reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedEntity {
    /// The name as the reply wrote it (not yet normalised).
    pub name: String,
    /// Its description; empty when the reply gave none.
    pub description: String,
}

/// A relation named in an extraction reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedRelation {
    /// Source entity name.
    pub source: String,
    /// Target entity name.
    pub target: String,
    /// The relation's words, source to target; may be empty.
    pub relation: String,
    /// Its description; empty when the reply gave none.
    pub description: String,
    /// Its keywords, as given.
    pub keywords: Vec<String>,
}

/// What one extraction reply named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extraction {
    /// Entities, in reply order.
    pub entities: Vec<ExtractedEntity>,
    /// Relations, in reply order.
    pub relations: Vec<ExtractedRelation>,
}

/// Reads an extraction reply leniently ([`parse_lenient`]). Accepted beyond the asked shape:
/// an entity given as a bare string, `head`/`tail` or `subject`/`object` for
/// `source`/`target`, `predicate` for `relation`, keywords as one comma-separated string.
/// Items without a name (entities) or without both ends (relations) are skipped.
///
/// # Errors
/// [`JsonReplyError`] when the reply holds no JSON, or its JSON is not an object with an
/// `entities` or `relations` list.
pub fn parse_extraction(reply: &str) -> Result<Extraction, JsonReplyError> {
    let value = parse_lenient(reply)?;
    let shape_error = || JsonReplyError {
        reason: "the JSON has neither an \"entities\" nor a \"relations\" list".into(),
        head: head(reply),
    };
    let Value::Object(map) = value else {
        return Err(shape_error());
    };
    let entities = map.get("entities").and_then(Value::as_array);
    let relations = map.get("relations").and_then(Value::as_array);
    if entities.is_none() && relations.is_none() {
        return Err(shape_error());
    }
    let mut out = Extraction::default();
    for item in entities.into_iter().flatten() {
        let (name, description) = match item {
            Value::String(s) => (s.clone(), String::new()),
            Value::Object(_) => (
                field(item, &["name", "entity"]),
                field(item, &["description"]),
            ),
            _ => continue,
        };
        if !name.trim().is_empty() {
            out.entities.push(ExtractedEntity { name, description });
        }
    }
    for item in relations.into_iter().flatten() {
        if !item.is_object() {
            continue;
        }
        let source = field(item, &["source", "head", "subject"]);
        let target = field(item, &["target", "tail", "object"]);
        if source.trim().is_empty() || target.trim().is_empty() {
            continue;
        }
        let keywords = match item.get("keywords") {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
            _ => Vec::new(),
        };
        out.relations.push(ExtractedRelation {
            source,
            target,
            relation: field(item, &["relation", "predicate"]),
            description: field(item, &["description"]),
            keywords,
        });
    }
    Ok(out)
}

/// The first of `names` that `item` holds as a string (numbers are written out), else empty.
fn field(item: &Value, names: &[&str]) -> String {
    for n in names {
        match item.get(*n) {
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Number(x)) => return x.to_string(),
            _ => {}
        }
    }
    String::new()
}

/// Reads a summary reply: the `summary` string of a JSON object reply, else the reply's text
/// (fences removed), whitespace collapsed and cut to `max_words` words.
///
/// # Errors
/// [`JsonReplyError`] when nothing but whitespace is left.
pub fn parse_summary(reply: &str, max_words: usize) -> Result<String, JsonReplyError> {
    let from_json = parse_lenient(reply)
        .ok()
        .and_then(|v| v.get("summary").and_then(Value::as_str).map(str::to_string));
    let text = from_json.unwrap_or_else(|| strip_fences(reply).to_string());
    let words: Vec<&str> = text.split_whitespace().take(max_words).collect();
    if words.is_empty() {
        return Err(JsonReplyError {
            reason: "the summary is empty".into(),
            head: head(reply),
        });
    }
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_reads_the_asked_shape_and_variants() {
        let reply = r#"```json
{"entities": [{"name": " Ada  Lovelace", "description": "A mathematician."}, "London", {"description": "no name"}],
 "relations": [{"source": "Ada Lovelace", "target": "London", "relation": "was born in",
   "description": "She was born there.", "keywords": ["birth", "birthplace"]},
   {"head": "Ada Lovelace", "tail": "Charles Babbage", "predicate": "worked with", "keywords": "engine, notes"},
   {"source": "only one end"}],}
```"#;
        let x = parse_extraction(reply).unwrap();
        assert_eq!(x.entities.len(), 2);
        assert_eq!(x.entities[0].name, " Ada  Lovelace");
        assert_eq!(x.entities[1].name, "London");
        assert_eq!(x.entities[1].description, "");
        assert_eq!(x.relations.len(), 2);
        assert_eq!(x.relations[0].keywords, ["birth", "birthplace"]);
        assert_eq!(x.relations[1].target, "Charles Babbage");
        assert_eq!(x.relations[1].relation, "worked with");
        assert_eq!(x.relations[1].keywords, ["engine", " notes"]);
    }

    #[test]
    fn extraction_rejects_other_shapes() {
        assert!(parse_extraction("[1, 2]").is_err());
        assert!(parse_extraction(r#"{"answer": "none"}"#).is_err());
        assert!(parse_extraction("no entities here").is_err());
        assert_eq!(
            parse_extraction(r#"{"entities": []}"#).unwrap(),
            Extraction::default()
        );
    }

    #[test]
    fn summary_from_text_or_json() {
        assert_eq!(
            parse_summary("  Two  cities.\n", 10).unwrap(),
            "Two cities."
        );
        assert_eq!(
            parse_summary("```json\n{\"summary\": \"a b c d\"}\n```", 3).unwrap(),
            "a b c"
        );
        assert!(parse_summary("  \n", 5).is_err());
    }

    #[test]
    fn prompts_carry_their_inputs() {
        let p = extraction_prompt("Ada", "Ada was born in London.");
        assert!(p
            .user
            .ends_with("Title: Ada\nPassage: Ada was born in London."));
        assert_eq!(p.version, EXTRACTION_PROMPT_VERSION);
        let s = summary_prompt(&["one", "two"], 50);
        assert!(s.user.contains("at most 50 words"));
        assert!(s.user.ends_with("Text 1: one\nText 2: two"));
    }
}
