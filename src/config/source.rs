//! Where a value is read from a request: `header:NAME`, `cookie:NAME`, `query:NAME`, `body:/pointer`.

use serde::Deserialize;

/// Where the identity is read from (`[identity] from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A request header (name lower-cased).
    Header(http::HeaderName),
    /// A cookie by name.
    Cookie(String),
}

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

fn header_name<E: serde::de::Error>(name: &str, spec: &str) -> Result<http::HeaderName, E> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| E::custom(format!("invalid header name in {spec:?}")))
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.split_once(':') {
            Some(("header", n)) if !n.is_empty() => Ok(SourceSpec::Header(header_name(n, &s)?)),
            Some(("cookie", n)) if !n.is_empty() => Ok(SourceSpec::Cookie(n.to_string())),
            _ => Err(serde::de::Error::custom(format!(
                "invalid identity source {s:?}: expected \"header:NAME\" (e.g. \"header:authorization\") or \"cookie:NAME\""
            ))),
        }
    }
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
