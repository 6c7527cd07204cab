//! Splits a newline-delimited body (NDJSON) into lines, each at most the largest event size.

use bytes::{Buf, BytesMut};

/// A line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upstream line is longer than {0} bytes")]
pub struct LineTooLong(pub usize);

/// An incremental line splitter: `\n` or `\r\n` ends a line; blank lines are skipped.
#[derive(Debug)]
pub struct Lines {
    buf: BytesMut,
    max: usize,
    /// Bytes of the unterminated line at the end of `buf`.
    open: usize,
}

impl Lines {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Lines {
        Lines {
            buf: BytesMut::new(),
            max,
            open: 0,
        }
    }

    /// Adds bytes; `Err` when a line exceeds the limit (those bytes are not kept).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), LineTooLong> {
        let mut open = self.open;
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if open + i > self.max {
                return Err(LineTooLong(self.max));
            }
            open = 0;
            rest = &rest[i + 1..];
        }
        open += rest.len();
        if open > self.max {
            return Err(LineTooLong(self.max));
        }
        self.open = open;
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete line, without its line end.
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            let end = self.buf.iter().position(|&b| b == b'\n')?;
            let line = self.buf.split_to(end + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(String::from_utf8_lossy(line).into_owned());
        }
    }

    /// At the end of the body: the last line when it has no line end (blank is none).
    pub fn take_rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.open = 0;
        let rest = rest.chunk();
        (!rest.iter().all(u8::is_ascii_whitespace)).then(|| String::from_utf8_lossy(rest).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks_and_line_ends() {
        let mut l = Lines::new(64);
        l.feed(b"{\"a\":1}\n{\"b\"").expect("fits");
        assert_eq!(l.next_line().as_deref(), Some("{\"a\":1}"));
        assert_eq!(l.next_line(), None);
        l.feed(b":2}\r\n\n\r\n{\"c\":\"\xc3").expect("fits");
        assert_eq!(l.next_line().as_deref(), Some("{\"b\":2}"));
        assert_eq!(l.next_line(), None);
        l.feed(b"\xa9\"}").expect("fits");
        assert_eq!(l.take_rest().as_deref(), Some("{\"c\":\"é\"}"));
        assert_eq!(l.take_rest(), None);
    }

    #[test]
    fn a_line_over_the_limit_is_refused_in_one_chunk_or_many() {
        let mut l = Lines::new(8);
        assert_eq!(l.feed(b"12345678\n"), Ok(()));
        assert_eq!(l.feed(b"123456789\n"), Err(LineTooLong(8)));
        let mut l = Lines::new(8);
        l.feed(b"1234").expect("fits");
        l.feed(b"5678").expect("fits");
        assert_eq!(l.feed(b"9"), Err(LineTooLong(8)));
        let mut l = Lines::new(8);
        assert_eq!(l.feed(&[b'x'; 100]), Err(LineTooLong(8)));
    }
}
