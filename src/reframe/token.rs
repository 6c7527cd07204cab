//! Reads the token text out of an upstream event's data.
//!
//! This runs once per token, so it walks the JSON with serde's visitor API instead of building a
//! `serde_json::Value`: keys and values off the path are skipped, and a token string without
//! escapes is borrowed from the event data rather than copied.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A parsed RFC 6901 JSON Pointer: its reference tokens, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// Parses `""` or `/a/b~1c` (`~1` is `/`, `~0` is `~`).
    pub fn parse(p: &str) -> Pointer {
        Pointer(
            p.split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
        )
    }
}

/// The token text at `pointer` in `data`, or the raw data when no pointer is configured.
/// `None` when the data is not JSON or the pointer does not resolve to a string, number, bool or null.
pub fn extract<'a>(data: &'a str, pointer: Option<&Pointer>) -> Option<Cow<'a, str>> {
    let Some(pointer) = pointer else {
        return Some(Cow::Borrowed(data));
    };
    let mut de = serde_json::Deserializer::from_str(data);
    let found = Find(&pointer.0).deserialize(&mut de).ok()?;
    de.end().ok()?;
    found
}

/// Finds the value at the remaining path.
struct Find<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then_some(Cow::Borrowed("")))
    }

    // A number or bool token is still text the model produced.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.0.is_empty().then(|| Cow::Owned(v.to_string())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.0.split_first() {
                Some((head, rest)) if found.is_none() && *head == *key => {
                    found = map.next_value_seed(Find(rest))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = self.0.first().and_then(|h| h.parse::<usize>().ok());
        let mut found = None;
        let mut i = 0;
        loop {
            if Some(i) == index {
                match seq.next_element_seed(Find(&self.0[1..]))? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(data: &str, p: &str) -> Option<String> {
        extract(data, Some(&Pointer::parse(p))).map(Cow::into_owned)
    }

    #[test]
    fn extracts() {
        assert_eq!(
            x(r#"{"content":"hé\n\"x\\"}"#, "/content").as_deref(),
            Some("hé\n\"x\\")
        );
        assert_eq!(x(r#"{"a":{"b":"c"}}"#, "/a/b").as_deref(), Some("c"));
        assert_eq!(
            x(r#"{"skip":{"deep":[1,{"x":2}]},"a":{"z":1,"b":"c"}}"#, "/a/b").as_deref(),
            Some("c")
        );
        assert_eq!(
            x(
                r#"{"choices":[{"delta":{"content":"hi"}}]}"#,
                "/choices/0/delta/content"
            )
            .as_deref(),
            Some("hi")
        );
        assert_eq!(x(r#"{"a/b":{"~":"t"}}"#, "/a~1b/~0").as_deref(), Some("t"));
        assert_eq!(x(r#"{"n":5}"#, "/n").as_deref(), Some("5"));
        assert_eq!(x(r#"{"n":null}"#, "/n").as_deref(), Some(""));
        assert_eq!(x(r#""whole""#, "").as_deref(), Some("whole"));
        assert_eq!(extract("raw text", None).as_deref(), Some("raw text"));
        assert_eq!(x("not json", "/content"), None);
        assert_eq!(x(r#"{"content":"a"} trailing"#, "/content"), None);
        assert_eq!(x(r#"{"x":1}"#, "/content"), None);
        assert_eq!(x(r#"{"content":[1]}"#, "/content"), None);
        assert_eq!(x(r#"{"content":{"a":1}}"#, "/content"), None);
        assert_eq!(x(r#"[1,2]"#, "/5"), None);
    }

    #[test]
    fn plain_strings_are_borrowed() {
        let data = r#"{"content":"plain token"}"#;
        assert!(matches!(
            extract(data, Some(&Pointer::parse("/content"))),
            Some(Cow::Borrowed(_))
        ));
    }
}
