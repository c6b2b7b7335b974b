//! Readable text from an HTML page, split into passages.
//!
//! The page is parsed with `scraper` (html5ever, so broken markup still parses) and walked
//! iteratively (no recursion, so a hostile 100,000-deep nesting cannot overflow the stack).
//! Subtrees that are not article text are skipped whole: `script`, `style`, `noscript`,
//! `template`, `svg`, `nav`, `footer`, `header`, `aside`, `form`, `iframe`, `head`. Block-level
//! elements end a paragraph; whitespace is collapsed. Paragraphs are then packed into passages
//! of about `passage_words` words, a long paragraph being cut into several.

use scraper::node::Node;
use scraper::Html;

/// Elements whose whole subtree is dropped.
const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "nav", "footer", "header", "aside", "form",
    "iframe", "head", "button", "select",
];

/// Elements that end a paragraph.
const BLOCK: &[&str] = &[
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "br",
    "tr",
    "td",
    "th",
    "table",
    "section",
    "article",
    "main",
    "blockquote",
    "pre",
    "dd",
    "dt",
    "dl",
    "figcaption",
    "body",
    "hr",
];

/// A page reduced to its title and paragraphs.
#[derive(Debug, Clone, PartialEq)]
pub struct PageText {
    /// Text of the `<title>` element, whitespace collapsed; empty when absent.
    pub title: String,
    /// Paragraphs of readable text, in document order, whitespace collapsed, none empty.
    pub paragraphs: Vec<String>,
}

/// Extracts the title and readable paragraphs of `html`.
pub fn extract(html: &str) -> PageText {
    let doc = Html::parse_document(html);
    let title = scraper::Selector::parse("title")
        .ok()
        .and_then(|sel| doc.select(&sel).next())
        .map(|t| collapse(&t.text().collect::<String>()))
        .unwrap_or_default();

    let mut paragraphs = Vec::new();
    let mut current = String::new();
    let mut skip_depth = 0usize;
    for edge in doc.tree.root().traverse() {
        match edge {
            ego_tree_edge::Open(node) => match node.value() {
                Node::Element(el) => {
                    let name = el.name();
                    if skip_depth > 0 || SKIP.contains(&name) {
                        skip_depth += 1;
                    } else if BLOCK.contains(&name) {
                        flush(&mut current, &mut paragraphs);
                    }
                }
                Node::Text(text) if skip_depth == 0 => {
                    current.push_str(text);
                    current.push(' ');
                }
                _ => {}
            },
            ego_tree_edge::Close(node) => {
                if let Node::Element(el) = node.value() {
                    if skip_depth > 0 {
                        skip_depth -= 1;
                    } else if BLOCK.contains(&el.name()) {
                        flush(&mut current, &mut paragraphs);
                    }
                }
            }
        }
    }
    flush(&mut current, &mut paragraphs);
    PageText { title, paragraphs }
}

/// `ego_tree`'s traversal edges.
mod ego_tree_edge {
    pub use ego_tree::iter::Edge::{Close, Open};
}

fn flush(current: &mut String, paragraphs: &mut Vec<String>) {
    let text = collapse(current);
    if !text.is_empty() {
        paragraphs.push(text);
    }
    current.clear();
}

/// Collapses runs of whitespace to one space and trims.
pub fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Packs paragraphs into passages of at most `words` words (at least 1). Consecutive short
/// paragraphs share a passage; a long paragraph is cut at word boundaries.
pub fn split_passages(paragraphs: &[String], words: usize) -> Vec<String> {
    let words = words.max(1);
    let mut out = Vec::new();
    let mut buf: Vec<&str> = Vec::new();
    for para in paragraphs {
        let para_words: Vec<&str> = para.split_whitespace().collect();
        if !buf.is_empty() && buf.len() + para_words.len() > words {
            out.push(buf.join(" "));
            buf.clear();
        }
        for w in para_words {
            if buf.len() == words {
                out.push(buf.join(" "));
                buf.clear();
            }
            buf.push(w);
        }
    }
    if !buf.is_empty() {
        out.push(buf.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_boilerplate_and_keeps_paragraphs() {
        let html = r#"<html><head><title> The  Page </title><style>p{color:red}</style></head>
            <body><nav>Home | About</nav><script>var secret = 1;</script>
            <article><h1>Heading</h1><p>First <b>bold</b> para.</p><p>Second</p></article>
            <footer>Copyright</footer></body></html>"#;
        let page = extract(html);
        assert_eq!(page.title, "The Page");
        assert_eq!(
            page.paragraphs,
            vec!["Heading", "First bold para.", "Second"]
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let html = format!(
            "{}deep text{}",
            "<div>".repeat(50_000),
            "</div>".repeat(50_000)
        );
        let page = extract(&html);
        assert!(page.paragraphs.iter().any(|p| p.contains("deep text")));
    }

    #[test]
    fn passages_pack_and_cut() {
        let paras = vec!["a b".to_string(), "c".into(), "d e f g h".into()];
        assert_eq!(split_passages(&paras, 3), vec!["a b c", "d e f", "g h"]);
        assert!(split_passages(&[], 3).is_empty());
    }
}
