//! Secrets written into spec text: found (so `check` can point to `env:`)
//! and redacted (so the spec served over SQL, logs, errors and events never
//! carry them). A secret is the password of a URL's userinfo
//! (`postgres://etl:s3cret@host/db`), a `password=` / `token=` / ... URL or
//! connection-string parameter, or the value of a YAML key named like a
//! secret (`password:`, `api_token:`, `secret_key:`). Values that point to
//! the environment (`env:NAME`) are references, not secrets.

use std::sync::LazyLock;

use regex::Regex;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "********";

/// `scheme://user:password@` in a URL.
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\x22]*:)(?P<secret>[^\s@/'\x22]+)(?P<post>@)")
        .expect("valid regex")
});

/// `password=...` in a query string or a key=value connection string.
static PARAM_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?P<pre>[?&\s;](?:password|passwd|pwd|secret|token|api_key|apikey|access_key|secret_key|sslpassword)=)(?P<secret>[^&\s;'\x22]+)(?P<post>)")
        .expect("valid regex")
});

/// `password: value` as a YAML key (any key whose name says secret).
static KEY_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^(?P<pre>\s*-?\s*[\x22']?(?P<key>[A-Za-z0-9_\-]*(?:password|passwd|secret|token|api_key|apikey|access_key|private_key)[A-Za-z0-9_\-]*)[\x22']?\s*:\s+)(?P<secret>[^\s#][^#\r\n]*?)(?P<post>\s*(?:#.*)?)$")
        .expect("valid regex")
});

/// A secret written inline in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSecret {
    /// 1-based line and column of the secret's first character.
    pub line: usize,
    pub column: usize,
    /// What it is: "URL password", "password parameter", "value of `password`".
    pub what: String,
}

/// Whether a match is a reference to a secret rather than one: an `env:`
/// value, or a key that names where the secret is (`password_env: VAR`).
fn is_reference(captures: &regex::Captures) -> bool {
    let value = captures["secret"].trim_matches(['"', '\'']);
    let key = captures.name("key").map_or("", |k| k.as_str()).to_ascii_lowercase();
    value.starts_with("env:")
        || value == REDACTED
        || value.is_empty()
        || key.ends_with("_env")
        || key.ends_with("_file")
}

/// `text` with every secret replaced by [`REDACTED`].
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for pattern in [&*URL_PASSWORD, &*PARAM_SECRET, &*KEY_SECRET] {
        out = pattern
            .replace_all(&out, |c: &regex::Captures| {
                if is_reference(c) {
                    c[0].to_string()
                } else {
                    format!("{}{REDACTED}{}", &c["pre"], &c["post"])
                }
            })
            .into_owned();
    }
    out
}

/// Every secret written inline in `text`, in order.
pub fn find_inline(text: &str) -> Vec<InlineSecret> {
    let mut found = Vec::new();
    for (pattern, what) in [
        (&*URL_PASSWORD, "a password in a URL"),
        (&*PARAM_SECRET, "a secret parameter"),
        (&*KEY_SECRET, "a secret value"),
    ] {
        for captures in pattern.captures_iter(text) {
            let secret = captures.name("secret").expect("pattern has a secret group");
            if is_reference(&captures) {
                continue;
            }
            let before = &text[..secret.start()];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            found.push(InlineSecret {
                line,
                column,
                what: what.to_string(),
            });
        }
    }
    found.sort_by_key(|s| (s.line, s.column));
    found.dedup_by_key(|s| (s.line, s.column));
    found
}
