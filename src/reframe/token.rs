//! Reads the token text out of an upstream event's data.

use std::borrow::Cow;

/// The token text at JSON Pointer `pointer` in `data`, or the raw data when no pointer is configured.
/// `None` when the data is not JSON or the pointer does not resolve.
pub fn extract<'a>(data: &'a str, pointer: Option<&str>) -> Option<Cow<'a, str>> {
    let Some(pointer) = pointer else {
        return Some(Cow::Borrowed(data));
    };
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::String(s) => Some(Cow::Owned(s.clone())),
        serde_json::Value::Null => Some(Cow::Borrowed("")),
        // A number or bool token is still text the model produced.
        other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
            Some(Cow::Owned(other.to_string()))
        }
        _ => None,
    }
}

/// The downstream data of a batch: `{"content":"...","batch_size":N}`.
pub fn batch_json(text: &str, tokens: usize) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        content: &'a str,
        batch_size: usize,
    }
    // Serializing a struct of a str and an integer cannot fail.
    serde_json::to_string(&Out {
        content: text,
        batch_size: tokens,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts() {
        assert_eq!(
            extract(r#"{"content":"hé\n\"x\\"}"#, Some("/content")).as_deref(),
            Some("hé\n\"x\\")
        );
        assert_eq!(extract(r#"{"a":{"b":"c"}}"#, Some("/a/b")).as_deref(), Some("c"));
        assert_eq!(extract(r#"{"n":5}"#, Some("/n")).as_deref(), Some("5"));
        assert_eq!(extract("raw text", None).as_deref(), Some("raw text"));
        assert_eq!(extract("not json", Some("/content")), None);
        assert_eq!(extract(r#"{"x":1}"#, Some("/content")), None);
        assert_eq!(extract(r#"{"content":[1]}"#, Some("/content")), None);
    }

    #[test]
    fn batch_json_escapes() {
        let j = batch_json("a\"b\\c\nd é 日本 😀", 3);
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        assert_eq!(v["content"], "a\"b\\c\nd é 日本 😀");
        assert_eq!(v["batch_size"], 3);
    }
}
