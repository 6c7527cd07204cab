//! Who owns a stream: a keyed hash of the configured credential, never the credential itself.

use serde::Deserialize;
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

/// Where the identity is read from (`[identity] from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A request header (name lower-cased).
    Header(http::HeaderName),
    /// A cookie by name.
    Cookie(String),
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "invalid identity source {s:?}: expected \"header:NAME\" (e.g. \"header:authorization\") or \"cookie:NAME\""
            ))
        };
        match s.split_once(':') {
            Some(("header", n)) if !n.is_empty() => http::HeaderName::from_bytes(n.as_bytes())
                .map(SourceSpec::Header)
                .map_err(|_| serde::de::Error::custom(format!("invalid header name in {s:?}"))),
            Some(("cookie", n)) if !n.is_empty() => Ok(SourceSpec::Cookie(n.to_string())),
            _ => Err(bad()),
        }
    }
}

/// A keyed 128-bit hash of a user's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(u128);

impl Owner {
    /// The hash as bytes, as a shared store keeps it.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// An owner from bytes written by [`Owner::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Owner(u128::from_be_bytes(bytes))
    }

    /// A fixed owner for tests.
    #[cfg(test)]
    pub fn test(n: u128) -> Self {
        Owner(n)
    }
}

/// Extracts and hashes identities with a keyed hash: a per-process random key, or the key every
/// replica on a shared stream store uses.
#[derive(Debug, Clone)]
pub struct IdentityRule {
    source: Option<SourceSpec>,
    key: [u8; 16],
}

impl IdentityRule {
    /// A rule for `[identity] from`; `None` means streams have no owner.
    pub fn new(source: Option<SourceSpec>) -> Self {
        IdentityRule {
            source,
            key: rand::random(),
        }
    }

    /// The same rule hashing with `key`.
    pub fn with_key(self, key: [u8; 16]) -> Self {
        IdentityRule { key, ..self }
    }

    /// The key it hashes with.
    pub fn key(&self) -> [u8; 16] {
        self.key
    }

    /// Whether an identity is configured at all.
    pub fn is_configured(&self) -> bool {
        self.source.is_some()
    }

    /// The owner of a request: `None` when not configured or absent from the request.
    pub fn owner(&self, headers: &http::HeaderMap) -> Option<Owner> {
        let raw = match self.source.as_ref()? {
            SourceSpec::Header(name) => headers.get(name)?.as_bytes(),
            SourceSpec::Cookie(name) => find_cookie(headers, name)?,
        };
        if raw.is_empty() {
            return None;
        }
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(raw);
        Some(Owner(h.finish128().as_u128()))
    }

    /// Whether a request may act on a stream owned by `owner`.
    pub fn permits(&self, stream_owner: Option<Owner>, request: Option<Owner>) -> bool {
        if !self.is_configured() {
            return true;
        }
        // With identity configured, ownerless streams (no credential at start) are resumable only without one too.
        stream_owner == request
    }
}

/// The raw value of a cookie by name, from any `Cookie` header.
fn find_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn header_identity() {
        let rule = IdentityRule::new(Some(SourceSpec::Header(http::header::AUTHORIZATION)));
        let a = rule.owner(&headers(&[("authorization", "Bearer a")]));
        let b = rule.owner(&headers(&[("authorization", "Bearer b")]));
        assert!(a.is_some() && a != b);
        assert_eq!(a, rule.owner(&headers(&[("authorization", "Bearer a")])));
        assert_eq!(rule.owner(&headers(&[])), None);
        assert!(rule.permits(a, a));
        assert!(!rule.permits(a, b));
        assert!(!rule.permits(a, None));
    }

    #[test]
    fn cookie_identity() {
        let rule = IdentityRule::new(Some(SourceSpec::Cookie("sid".into())));
        let a = rule.owner(&headers(&[("cookie", "theme=dark; sid=abc")]));
        let a2 = rule.owner(&headers(&[("cookie", "x=1"), ("cookie", "sid=abc ;y=2")]));
        assert!(a.is_some());
        assert_eq!(a, a2);
        assert_eq!(rule.owner(&headers(&[("cookie", "sidx=abc")])), None);
    }

    #[test]
    fn unconfigured_permits_all() {
        let rule = IdentityRule::new(None);
        assert_eq!(rule.owner(&headers(&[("authorization", "x")])), None);
        assert!(rule.permits(None, None));
    }

    #[test]
    fn rules_with_one_key_agree() {
        let h = headers(&[("authorization", "same")]);
        let source = || Some(SourceSpec::Header(http::header::AUTHORIZATION));
        let r1 = IdentityRule::new(source()).with_key([9; 16]);
        let r2 = IdentityRule::new(source()).with_key([9; 16]);
        assert!(r1.owner(&h).is_some());
        assert_eq!(r1.owner(&h), r2.owner(&h));
    }

    #[test]
    fn keys_differ_between_rules() {
        let h = headers(&[("authorization", "same")]);
        let r1 = IdentityRule::new(Some(SourceSpec::Header(http::header::AUTHORIZATION)));
        let r2 = IdentityRule::new(Some(SourceSpec::Header(http::header::AUTHORIZATION)));
        assert_ne!(r1.owner(&h), r2.owner(&h));
    }
}
