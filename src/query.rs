//! Query-string helpers: read a parameter, or drop one while keeping the rest byte-exact.

use http::Uri;

/// The query parameter a client may use instead of the `Last-Event-ID` header.
pub const LAST_EVENT_ID_PARAM: &str = "last_event_id";

fn pairs(uri: &Uri) -> impl Iterator<Item = &str> {
    uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty())
}

fn key_of(pair: &str) -> std::borrow::Cow<'_, str> {
    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
    form_urlencoded::parse(key.as_bytes())
        .next()
        .map(|(k, _)| k)
        .unwrap_or_default()
}

/// The first value of `name`, percent-decoded, as raw bytes.
pub fn param_raw(uri: &Uri, name: &str) -> Option<Vec<u8>> {
    pairs(uri).find(|p| key_of(p) == name).map(|p| {
        let value = p.split_once('=').map_or("", |(_, v)| v);
        percent_decode(value)
    })
}

/// The first value of `name` as text (lossy).
pub fn param(uri: &Uri, name: &str) -> Option<String> {
    param_raw(uri, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Path and query with every `name` parameter removed; other parameters unchanged.
pub fn without_param(uri: &Uri, name: &str) -> String {
    let path = uri.path();
    let kept: Vec<&str> = pairs(uri).filter(|p| key_of(p) != name).collect();
    match (uri.query(), kept.is_empty()) {
        (None, _) => path.to_string(),
        (Some(_), true) => path.to_string(),
        (Some(q), false) if kept.len() == pairs(uri).count() => format!("{path}?{q}"),
        (Some(_), false) => format!("{path}?{}", kept.join("&")),
    }
}

/// `+` as space and `%XX` decoded to raw bytes; invalid escapes are kept as they are (like browsers).
fn percent_decode(s: &str) -> Vec<u8> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn reads_params() {
        let u = uri("/s?question=a%20b+c&last_event_id=abc%3A12&x");
        assert_eq!(param(&u, "question").as_deref(), Some("a b c"));
        assert_eq!(param_raw(&u, "last_event_id"), Some(b"abc:12".to_vec()));
        assert_eq!(param(&u, "x").as_deref(), Some(""));
        assert_eq!(param(&u, "nope"), None);
        assert_eq!(param_raw(&uri("/s?k=%ff%"), "k"), Some(vec![0xff, b'%']));
    }

    #[test]
    fn strips_param_keeping_the_rest_exact() {
        assert_eq!(
            without_param(&uri("/s?a=1&last_event_id=x%3A1&b=%20"), "last_event_id"),
            "/s?a=1&b=%20"
        );
        assert_eq!(without_param(&uri("/s?last_event_id=x"), "last_event_id"), "/s");
        assert_eq!(without_param(&uri("/s?a=1&&b"), "last_event_id"), "/s?a=1&&b");
        assert_eq!(without_param(&uri("/s"), "last_event_id"), "/s");
        assert_eq!(
            without_param(&uri("/s?last%5Fevent%5Fid=1&q=2"), "last_event_id"),
            "/s?q=2"
        );
    }
}
