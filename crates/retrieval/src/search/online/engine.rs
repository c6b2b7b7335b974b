//! Web search engines: the request URL for a query and the parsing of their result lists.

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// Which web search engine to query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// A SearXNG instance's JSON API: `GET {base}/search?q=…&format=json` (the instance must
    /// enable the `json` format). **The default.**
    #[default]
    Searxng,
    /// DuckDuckGo's HTML results page: `GET {base}/html/?q=…`.
    Duckduckgo,
}

impl Engine {
    /// The engine's name, as used in cache keys and errors.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Searxng => "searxng",
            Engine::Duckduckgo => "duckduckgo",
        }
    }

    /// The request URL for `query` under `base`.
    ///
    /// # Errors
    /// A message when `base` is not an absolute http(s) URL.
    pub fn request_url(self, base: &str, query: &str) -> Result<Url, String> {
        let base = Url::parse(base).map_err(|e| format!("base URL {base:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("base URL {base} is not http or https"));
        }
        let path = match self {
            Engine::Searxng => "search",
            Engine::Duckduckgo => "html/",
        };
        let mut url = join(&base, path)?;
        match self {
            Engine::Searxng => url
                .query_pairs_mut()
                .append_pair("q", query)
                .append_pair("format", "json"),
            Engine::Duckduckgo => url.query_pairs_mut().append_pair("q", query),
        };
        Ok(url)
    }

    #[cfg(feature = "online")]
    /// Parses a result page fetched from `page_url` into results, best first.
    ///
    /// # Errors
    /// A message when the body is not what the engine sends (SearXNG: not JSON with a
    /// `results` list).
    pub fn parse(self, page_url: &Url, body: &str) -> Result<Vec<SearchResult>, String> {
        match self {
            Engine::Searxng => parse_searxng(body),
            Engine::Duckduckgo => Ok(parse_duckduckgo(page_url, body)),
        }
    }
}

/// One entry of a result list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResult {
    /// The result's URL (absolute; may be any scheme, filtered later).
    pub url: String,
    /// The result's title.
    pub title: String,
    /// The engine's snippet for it; may be empty.
    pub snippet: String,
}

/// `base` joined with `path`, keeping any path prefix of `base` (`http://h/searx` + `search` →
/// `http://h/searx/search`).
fn join(base: &Url, path: &str) -> Result<Url, String> {
    let mut b = base.clone();
    if !b.path().ends_with('/') {
        let p = format!("{}/", b.path());
        b.set_path(&p);
    }
    b.join(path)
        .map_err(|e| format!("joining {b} and {path}: {e}"))
}

#[cfg(feature = "online")]
fn parse_searxng(body: &str) -> Result<Vec<SearchResult>, String> {
    #[derive(Deserialize)]
    struct Page {
        results: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        url: Option<String>,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        content: Option<String>,
    }
    let page: Page =
        serde_json::from_str(body).map_err(|e| format!("not a SearXNG JSON result page: {e}"))?;
    Ok(page
        .results
        .into_iter()
        .filter_map(|i| {
            Some(SearchResult {
                url: i.url?,
                title: super::extract::collapse(&i.title.unwrap_or_default()),
                snippet: super::extract::collapse(&i.content.unwrap_or_default()),
            })
        })
        .collect())
}

/// DuckDuckGo's HTML page: results are `a.result__a` links, snippets `.result__snippet`; links
/// may go through DDG's redirector (`/l/?uddg=<target>`), which is unwrapped.
#[cfg(feature = "online")]
fn parse_duckduckgo(page_url: &Url, body: &str) -> Vec<SearchResult> {
    let doc = scraper::Html::parse_document(body);
    let (Ok(result), Ok(link), Ok(snippet)) = (
        scraper::Selector::parse(".result"),
        scraper::Selector::parse("a.result__a"),
        scraper::Selector::parse(".result__snippet"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in doc.select(&result) {
        let Some(a) = r.select(&link).next() else {
            continue;
        };
        let Some(href) = a.value().attr("href") else {
            continue;
        };
        let Ok(mut url) = page_url.join(href) else {
            continue;
        };
        if url.path().ends_with("/l/") {
            if let Some((_, target)) = url.query_pairs().find(|(k, _)| k == "uddg") {
                match Url::parse(&target) {
                    Ok(t) => url = t,
                    Err(_) => continue,
                }
            }
        }
        out.push(SearchResult {
            url: url.to_string(),
            title: super::extract::collapse(&a.text().collect::<String>()),
            snippet: r
                .select(&snippet)
                .next()
                .map(|s| super::extract::collapse(&s.text().collect::<String>()))
                .unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_keep_base_path_and_encode_query() {
        let u = Engine::Searxng
            .request_url("http://127.0.0.1:9/searx", "a&b c")
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/searx/search?q=a%26b+c&format=json"
        );
        let u = Engine::Duckduckgo.request_url("http://h/", "x").unwrap();
        assert_eq!(u.as_str(), "http://h/html/?q=x");
        assert!(Engine::Searxng.request_url("ftp://h", "x").is_err());
    }

    #[test]
    #[cfg(feature = "online")]
    fn duckduckgo_redirect_links_are_unwrapped() {
        let page = Url::parse("http://h/html/?q=x").unwrap();
        let body = r#"<div class="result"><a class="result__a" href="//h/l/?uddg=http%3A%2F%2Fexample.org%2Fa&rut=1">A <b>title</b></a>
            <a class="result__snippet">Snip</a></div>
            <div class="result"><a class="result__a" href="/direct">B</a></div>"#;
        let r = Engine::Duckduckgo.parse(&page, body).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].url, "http://example.org/a");
        assert_eq!(r[0].title, "A title");
        assert_eq!(r[0].snippet, "Snip");
        assert_eq!(r[1].url, "http://h/direct");
    }
}
