//! Where the model name is read from a request: `query:NAME`, `header:NAME`, `body:/pointer`,
//! `fixed:NAME`. (The identity's `header:NAME` and `cookie:NAME` are read by [`crate::identity`].)

use serde::Deserialize;

/// Where the model name is read from (`[[stream]] model_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A query parameter.
    Query(String),
    /// A request header.
    Header(http::HeaderName),
    /// A JSON Pointer into a JSON request body.
    Body(String),
    /// Always this name.
    Fixed(String),
}

/// A header name from a `header:NAME` value, or a config error naming the whole value.
fn header_name<E: serde::de::Error>(name: &str, spec: &str) -> Result<http::HeaderName, E> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| E::custom(format!("invalid header name in {spec:?}")))
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = |why: &str| {
            serde::de::Error::custom(format!(
                "invalid model_from {s:?}: {why}; expected \"query:NAME\", \"header:NAME\", \"body:/json/pointer\", \"fixed:NAME\" or a model name"
            ))
        };
        match s.split_once(':') {
            Some(("query", n)) if !n.is_empty() => Ok(ModelSource::Query(n.to_string())),
            Some(("header", n)) if !n.is_empty() => Ok(ModelSource::Header(header_name(n, &s)?)),
            Some(("body", p)) if p.starts_with('/') => Ok(ModelSource::Body(p.to_string())),
            Some(("fixed", n)) if !n.is_empty() => Ok(ModelSource::Fixed(n.to_string())),
            Some(("query" | "header" | "fixed", _)) => Err(bad("the name is empty")),
            Some(("body", _)) => Err(bad("the JSON Pointer must start with '/'")),
            // Anything else is a fixed model name, including Ollama tags such as "llama3:8b".
            _ if !s.trim().is_empty() => Ok(ModelSource::Fixed(s)),
            _ => Err(bad("it is empty")),
        }
    }
}
