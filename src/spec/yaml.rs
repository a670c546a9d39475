//! The one place that names the YAML crate. Everything else parses YAML through
//! [`from_str`], so swapping the parser is a one-file change.

use serde::de::DeserializeOwned;

/// Where in a YAML document something is, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML parse or shape error with its position (when the parser knows it).
#[derive(Debug, Clone)]
pub struct YamlError {
    pub position: Option<Position>,
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A value together with the position it was read from.
pub type Spanned<T> = serde_saphyr::Spanned<T>;

/// Position of a spanned value.
pub fn position_of<T>(value: &Spanned<T>) -> Position {
    Position {
        line: value.referenced.line() as u32,
        column: value.referenced.column() as u32,
    }
}

/// Parse a YAML document into `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(text).map_err(|err| {
        let position = err.location().map(|loc| Position {
            line: loc.line() as u32,
            column: loc.column() as u32,
        });
        // The crate's Display repeats the location; keep only the first line of
        // the message so callers can prefix their own `file:line:col`.
        let message = err.to_string();
        let message = message.lines().next().unwrap_or_default().to_string();
        YamlError { position, message }
    })
}
