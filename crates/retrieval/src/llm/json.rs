//! Lenient JSON for model replies.
//!
//! Chat models asked for JSON wrap it in Markdown fences, put prose before and after it, leave a
//! trailing comma before `]` or `}`, and run out of `max_tokens` in the middle of a list.
//! [`parse_lenient`] undoes each of those in turn and otherwise leaves the text alone:
//!
//! 1. **Fences.** When the reply holds a ```` ``` ```` fence, only the text inside the first
//!    fenced block is kept (its info string such as `json` dropped); an unclosed fence keeps
//!    everything after it.
//! 2. **The first value.** The first `{` or `[` starts the value, and a scan that skips string
//!    contents (escapes included) finds the bracket that balances it; prose around it is
//!    ignored.
//! 3. **Cut-off replies.** When the text ends before the value balances, it is cut back to the
//!    end of the last complete object or array nested inside it, and the brackets still open
//!    there are closed: `{"entities":[{"name":"A"},{"na` becomes
//!    `{"entities":[{"name":"A"}]}`. A reply cut off before any nested value completed cannot
//!    be repaired.
//! 4. **Trailing commas.** A comma followed (after whitespace) by `]` or `}` is removed, outside
//!    strings only.
//!
//! What still fails to parse is an error carrying the head of the reply, so the caller can log
//! it and count the failure.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde_json::Value;

pub(crate) use crate::http::client::head;

/// Why a reply holds no usable JSON. `head` is the start of the reply (at most 300 characters,
/// [`head`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; reply starts {head:?}")]
pub struct JsonReplyError {
    /// What went wrong: no value found, an unbalanced value, or serde_json's message.
    pub reason: String,
    /// The first characters of the reply.
    pub head: String,
}

/// Parses the first JSON object or array in a model reply, tolerating fences, surrounding
/// prose, trailing commas and a reply cut off mid-list (module doc).
///
/// # Errors
/// [`JsonReplyError`] when the reply holds no `{` or `[`, when a cut-off value cannot be
/// repaired, or when the repaired text is still not JSON.
pub fn parse_lenient(reply: &str) -> Result<Value, JsonReplyError> {
    let fail = |reason: String| JsonReplyError {
        reason,
        head: head(reply),
    };
    let body = strip_fences(reply);
    let Some(start) = body.find(['{', '[']) else {
        return Err(fail("no JSON object or array in the reply".into()));
    };
    let candidate = balanced_value(&body[start..])
        .ok_or_else(|| fail("the JSON value is cut off and cannot be repaired".into()))?;
    let cleaned = drop_trailing_commas(&candidate);
    serde_json::from_str(&cleaned).map_err(|e| fail(format!("not JSON: {e}")))
}

/// The text inside the first ```` ``` ```` fence of `reply`, or `reply` when it has none.
pub(crate) fn strip_fences(reply: &str) -> &str {
    let Some(open) = reply.find("```") else {
        return reply;
    };
    let after = &reply[open + 3..];
    // Drop the info string (`json`, `JSON`, …) up to the end of the fence line.
    let inner = match after.find('\n') {
        Some(nl) if !after[..nl].contains(['{', '[']) => &after[nl + 1..],
        _ => after,
    };
    match inner.find("```") {
        Some(close) => &inner[..close],
        None => inner,
    }
}

/// `text` (which starts with `{` or `[`) up to the bracket balancing its first one; when the
/// text ends first, the repaired prefix of step 3 of the module doc, or `None`.
fn balanced_value(text: &str) -> Option<String> {
    let mut stack: Vec<char> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    // (byte end, closers still needed) after the last complete nested container.
    let mut cut: Option<(usize, Vec<char>)> = None;
    for (i, c) in text.char_indices() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => stack.push('}'),
            '[' => stack.push(']'),
            '}' | ']' => {
                // A mismatched closer is left for serde_json to report.
                stack.pop();
                if stack.is_empty() {
                    return Some(text[..=i].to_string());
                }
                cut = Some((i + 1, stack.clone()));
            }
            _ => {}
        }
    }
    let (end, open) = cut?;
    let mut repaired = text[..end].to_string();
    for closer in open.iter().rev() {
        repaired.push(*closer);
    }
    Some(repaired)
}

/// `text` without commas that precede (after whitespace) a `]` or `}`, outside strings.
fn drop_trailing_commas(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            out.push(c);
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if c == ',' {
            let next = chars.iter().skip(i + 1).find(|n| !n.is_whitespace());
            if matches!(next, Some(']' | '}')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_object_parses() {
        assert_eq!(parse_lenient(r#"{"a": 1}"#).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn fenced_reply_with_prose() {
        let reply = "Here you go:\n```json\n{\"a\": [1, 2]}\n```\nHope this helps.";
        assert_eq!(parse_lenient(reply).unwrap(), json!({"a": [1, 2]}));
        let bare = "```\n[1, 2]\n```";
        assert_eq!(parse_lenient(bare).unwrap(), json!([1, 2]));
        let one_line = "```{\"a\": 1}```";
        assert_eq!(parse_lenient(one_line).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn first_value_only_and_prose_before() {
        let reply = "Sure. {\"a\": \"x}\"} and then {\"b\": 2}";
        assert_eq!(parse_lenient(reply).unwrap(), json!({"a": "x}"}));
    }

    #[test]
    fn brackets_inside_strings_and_escapes_are_skipped() {
        let reply = r#"{"a": "he said \"[{\" loudly", "b": ["]"]}"#;
        assert_eq!(
            parse_lenient(reply).unwrap(),
            json!({"a": "he said \"[{\" loudly", "b": ["]"]})
        );
    }

    #[test]
    fn trailing_commas_are_dropped_outside_strings() {
        let reply = "{\"a\": [1, 2, ], \"b\": \"x, ]\",\n}";
        assert_eq!(
            parse_lenient(reply).unwrap(),
            json!({"a": [1, 2], "b": "x, ]"})
        );
    }

    #[test]
    fn cut_off_mid_array_keeps_complete_items() {
        let reply = r#"```json
{"entities": [{"name": "A", "description": "first"}, {"name": "B"}, {"name": "C", "descr"#;
        assert_eq!(
            parse_lenient(reply).unwrap(),
            json!({"entities": [{"name": "A", "description": "first"}, {"name": "B"}]})
        );
        let after_list = r#"{"entities": [{"name": "A"}], "relations": [{"source": "A", "ta"#;
        assert_eq!(
            parse_lenient(after_list).unwrap(),
            json!({"entities": [{"name": "A"}]})
        );
    }

    #[test]
    fn unrepairable_replies_are_errors_with_the_head() {
        let none = parse_lenient("I cannot find any entities.").unwrap_err();
        assert!(none.reason.contains("no JSON"), "{none}");
        assert_eq!(none.head, "I cannot find any entities.");
        let cut = parse_lenient(r#"{"entities": "unterminated"#).unwrap_err();
        assert!(cut.reason.contains("cut off"), "{cut}");
        let bad = parse_lenient("{name: A}").unwrap_err();
        assert!(bad.reason.starts_with("not JSON"), "{bad}");
        let long = "x".repeat(500);
        assert_eq!(parse_lenient(&long).unwrap_err().head.len(), 300);
    }
}
