//! A model's chat template, rendered by a real Jinja engine (minijinja).
//!
//! Hugging Face models ship their conversation format as a Jinja template
//! (`tokenizer_config.json`'s `chat_template`; GGUF files carry it as
//! `tokenizer.chat_template`). transformers renders it in a sandboxed Jinja2 environment with
//! `trim_blocks` and `lstrip_blocks` on, the variables `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, and the helpers `raise_exception` and `strftime_now`
//! (`transformers/utils/chat_template_utils.py`). [`ChatTemplate`] sets up the same
//! environment; the Python string methods templates call (`.strip()`, `.startswith()`,
//! `.split()`) come from minijinja-contrib's `pycompat` callback. Tool-calling variables
//! (`tools`, `documents`) are left undefined, which templates test with `is defined`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde::Serialize;

use super::tokenizer::Tokenizer;

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A turn of `role` saying `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Errors compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template does not parse.
    #[error("chat template does not compile: {0:#}")]
    Compile(minijinja::Error),
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("chat template failed to render: {0:#}")]
    Render(minijinja::Error),
}

/// A compiled chat template with the tokenizer's BOS/EOS strings.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source` in a transformers-compatible environment.
    ///
    /// # Errors
    /// [`ChatError::Compile`] for a template that does not parse.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, _> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template_owned(NAME, source.to_string())
            .map_err(ChatError::Compile)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template `tokenizer` carries, if any, with its BOS/EOS token strings.
    ///
    /// # Errors
    /// [`ChatError::Compile`] for a template that does not parse.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Option<Self>, ChatError> {
        let Some(source) = tokenizer.chat_template() else {
            return Ok(None);
        };
        let token = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        Self::new(
            source,
            &token(tokenizer.bos_id()),
            &token(tokenizer.eos_id()),
        )
        .map(Some)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins. Special tokens appear as text (encode with `parse_special = true`).
    ///
    /// # Errors
    /// [`ChatError::Render`], e.g. when the template raises for a role it does not accept.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self.env.get_template(NAME).map_err(ChatError::Render)?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(ChatError::Render)
    }
}

/// ChatML (`<|im_start|>role\n…<|im_end|>\n`), the format used when a model ships no
/// template (SmolLM2, Qwen).
pub fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m.role, m.content
        ));
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}

/// `strftime` for the current UTC date, for templates that stamp "Today Date": `%d`, `%m`,
/// `%Y`, `%b`, `%B`, `%H`, `%M`, `%%`; other directives are kept as written.
fn strftime_now(fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // `civil_from_days` returns a month in 1–12.
    let month = MONTHS
        .get((m as usize).wrapping_sub(1))
        .copied()
        .unwrap_or_default();
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('b') => out.push_str(month.get(..3).unwrap_or(month)),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn renders_with_trim_blocks_pycompat_and_raise() {
        let src = "{% for m in messages %}\n{% if m.role not in ['user', 'system'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n[{{ m.role }}]{{ m.content.strip() }}{% if m.content.startswith('Hi') %}!{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}{{ bos_token }}>{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let msgs = [
            ChatMessage::new("system", "  be brief "),
            ChatMessage::new("user", "Hi there"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            // trim_blocks eats the newline after each `{% endif %}`, as Jinja2 does.
            "[system]be brief[user]Hi there!<s>>"
        );
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            "[system]be brief[user]Hi there!"
        );
        let err = t
            .render(&[ChatMessage::new("tool", "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("bad role tool"), "{err}");
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatError::Compile(_))
        ));
    }

    #[test]
    fn strftime_formats_known_directives() {
        let s = strftime_now("%d %b %Y|%%|%q");
        let parts: Vec<&str> = s.split('|').collect();
        assert_eq!(parts[1], "%");
        assert_eq!(parts[2], "%q");
        let date: Vec<&str> = parts[0].split(' ').collect();
        assert_eq!(date.len(), 3);
        assert_eq!(date[0].len(), 2);
        assert_eq!(date[1].len(), 3);
        assert!(date[2].parse::<i64>().unwrap() >= 2024);
    }
}
