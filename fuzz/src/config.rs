//! The config loader on any text: it never panics, and every error names a real position.

use sse_proxy::config::{Config, ConfigError};

/// The file name passed to the loader (and expected back in errors).
const FILE: &str = "fuzz.toml";

/// Loads `data` as a config (invalid UTF-8 replaced, as an editor would show it).
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_text(&text);
}

/// Loads `text` and checks the error's position, if any.
pub fn check_text(text: &str) {
    match Config::from_toml_str(text, FILE) {
        Ok(_) => {}
        Err(ConfigError::Invalid {
            file,
            line,
            col,
            message,
        }) => {
            assert_eq!(file, FILE);
            assert!(!message.trim().is_empty(), "an error says what is wrong");
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(&line),
                "line {line} outside 1..={} ({message}) for {text:?}",
                lines.len()
            );
            let len = lines[line - 1].len();
            assert!(
                (1..=len + 1).contains(&col),
                "column {col} outside 1..={} of line {line} ({message}) for {text:?}",
                len + 1
            );
        }
        Err(other) => panic!("a string cannot fail to be read: {other:?}"),
    }
}
