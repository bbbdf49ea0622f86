//! Incremental `text/event-stream` framing.
//!
//! Why: MCP servers answer a POST with an SSE stream that can carry progress notifications,
//! log messages and server requests before the response, spread over minutes. The filter must
//! pass each event on as soon as it is complete (never buffer the stream), yet it needs whole
//! events to find the JSON-RPC response inside (a call's outcome; a member's `initialize`
//! answer). [`SseSplitter`] buffers only the bytes of the current, incomplete event.
//!
//! Framing follows the HTML Living Standard: lines end with CRLF, LF or CR; an empty line ends
//! an event; `data:` lines are joined with `\n`; one space after the colon is dropped.

/// Splits a byte stream into complete SSE events.
#[derive(Debug)]
pub struct SseSplitter {
    buf: Vec<u8>,
    /// Where scanning resumes in `buf`.
    scan: usize,
    /// Start of the current line in `buf`.
    line_start: usize,
    max_pending: usize,
    overflowed: bool,
}

impl SseSplitter {
    /// A splitter that holds at most `max_pending` bytes of one incomplete event.
    pub fn new(max_pending: usize) -> Self {
        Self {
            buf: Vec::new(),
            scan: 0,
            line_start: 0,
            max_pending,
            overflowed: false,
        }
    }

    /// True once an event grew beyond `max_pending` (the splitter then drops its bytes).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Feed bytes; returns every event completed by them, each with its terminating blank line.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        if self.overflowed {
            return events;
        }
        self.buf.extend_from_slice(chunk);
        let mut event_start = 0;
        let mut i = self.scan;
        while let Some(&b) = self.buf.get(i) {
            let term_len = match b {
                b'\n' => 1,
                b'\r' => match self.buf.get(i + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => break, // a CR at the end: is a LF next? wait for more bytes
                },
                _ => {
                    i += 1;
                    continue;
                }
            };
            let empty_line = i == self.line_start;
            i += term_len;
            self.line_start = i;
            if empty_line {
                if let Some(ev) = self.buf.get(event_start..i) {
                    events.push(ev.to_vec());
                }
                event_start = i;
            }
        }
        self.buf.drain(..event_start.min(self.buf.len()));
        self.scan = i - event_start;
        self.line_start -= event_start;
        if self.buf.len() > self.max_pending {
            self.overflowed = true;
            self.buf = Vec::new();
            self.scan = 0;
            self.line_start = 0;
        }
        events
    }

    /// The bytes of the incomplete event at the end of the stream (possibly empty).
    pub fn finish(&mut self) -> Vec<u8> {
        self.scan = 0;
        self.line_start = 0;
        std::mem::take(&mut self.buf)
    }
}

/// Rewrites an event stream event by event, as chunks arrive: complete events go on (each
/// through the caller's rewrite), an incomplete one waits for the next chunk (at most
/// [`MAX_HELD`] bytes; beyond that the rewriter gives up and passes everything on as it is).
#[derive(Debug, Default)]
pub struct EventRewriter {
    held: Vec<u8>,
    given_up: bool,
}

/// The most bytes of one incomplete event an [`EventRewriter`] holds back.
pub const MAX_HELD: usize = 1024 * 1024;

impl EventRewriter {
    /// The bytes to pass on instead of `chunk` (`None`: pass `chunk` as it is): the complete
    /// events so far, each replaced by `rewrite(event)` when that is `Some`; at `end`,
    /// everything.
    pub fn push(
        &mut self,
        chunk: &[u8],
        end: bool,
        rewrite: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        if self.given_up {
            return None;
        }
        let mut buf = std::mem::take(&mut self.held);
        let untouched = buf.is_empty();
        buf.extend_from_slice(chunk);
        let complete = if end { buf.len() } else { complete_len(&buf) };
        let tail = buf.split_off(complete);
        if tail.len() > MAX_HELD {
            self.given_up = true;
            buf.extend_from_slice(&tail);
            return (!untouched).then_some(buf);
        }
        self.held = tail;
        let mut out = Vec::with_capacity(buf.len());
        let mut rewritten = false;
        let mut splitter = SseSplitter::new(usize::MAX);
        let mut events = splitter.push(&buf);
        events.push(splitter.finish());
        for event in events {
            match rewrite(&event) {
                Some(new) => {
                    out.extend_from_slice(&new);
                    rewritten = true;
                }
                None => out.extend_from_slice(&event),
            }
        }
        if untouched && !rewritten && self.held.is_empty() {
            return None;
        }
        Some(out)
    }
}

/// How many leading bytes of `buf` are complete events (up to and including the last blank
/// line). A CR at the very end may be the first half of a CRLF: not counted yet.
pub fn complete_len(buf: &[u8]) -> usize {
    let mut end = 0;
    let mut line_start = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let terminator = match b {
            b'\n' => 1,
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => 2,
                Some(_) => 1,
                None => break,
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            end = i + terminator;
        }
        i += terminator;
        line_start = i;
    }
    end
}

/// `event` with its data replaced by `data` (one `data:` line where the first one was; the
/// other fields kept in order).
pub fn with_data(event: &[u8], data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + 16);
    let mut data_written = false;
    for line in lines(event) {
        if line.is_empty() {
            continue;
        }
        if field(line).0 == b"data" {
            if !data_written {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(data.as_bytes());
                out.push(b'\n');
                data_written = true;
            }
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

/// Split `raw` into lines without their terminators.
fn lines(raw: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'\n' || b == b'\r' {
            out.push(raw.get(start..i).unwrap_or_default());
            i += if b == b'\r' && raw.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            start = i;
        } else {
            i += 1;
        }
    }
    if start < raw.len() {
        out.push(raw.get(start..).unwrap_or_default());
    }
    out
}

/// Split one line into (field, value) per the SSE rules.
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        None => (line, &[]),
        Some(c) => {
            let name = line.get(..c).unwrap_or_default();
            let mut value = line.get(c + 1..).unwrap_or_default();
            if value.first() == Some(&b' ') {
                value = value.get(1..).unwrap_or_default();
            }
            (name, value)
        }
    }
}

/// The event's data (`data:` lines joined with `\n`), or `None` if it has no data line or the
/// data is not UTF-8.
pub fn event_data(raw: &[u8]) -> Option<String> {
    let mut data: Option<Vec<u8>> = None;
    for line in lines(raw) {
        let (name, value) = field(line);
        if name == b"data" {
            match &mut data {
                None => data = Some(value.to_vec()),
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
            }
        }
    }
    data.and_then(|d| String::from_utf8(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut s = SseSplitter::new(1 << 20);
        let mut events = Vec::new();
        for c in chunks {
            events.extend(s.push(c));
        }
        (events, s.finish())
    }

    #[test]
    fn splits_events_across_chunk_boundaries() {
        let stream = b"id: 1\ndata: {\"a\":1}\n\nevent: message\r\ndata: x\r\n\r\ndata: y\rdata: z\r\r: comment\n\ndata: tail";
        let want_events: Vec<&[u8]> = vec![
            b"id: 1\ndata: {\"a\":1}\n\n",
            b"event: message\r\ndata: x\r\n\r\n",
            b"data: y\rdata: z\r\r",
            b": comment\n\n",
        ];
        // Every way of cutting the stream into two or three chunks gives the same events.
        for cut1 in 0..=stream.len() {
            for cut2 in [cut1, (cut1 + 3).min(stream.len()), stream.len()] {
                let (a, rest) = stream.split_at(cut1);
                let (b, c) = rest.split_at(cut2 - cut1);
                let (events, tail) = split_all(&[a, b, c]);
                let events: Vec<&[u8]> = events.iter().map(|e| e.as_slice()).collect();
                assert_eq!(events, want_events, "cuts {cut1} {cut2}");
                assert_eq!(tail, b"data: tail", "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let stream = b"data: a\r\n\r\ndata: b\n\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (events, tail) = split_all(&chunks);
        assert_eq!(
            events,
            vec![b"data: a\r\n\r\n".to_vec(), b"data: b\n\n".to_vec()]
        );
        assert!(tail.is_empty());
    }

    #[test]
    fn overflow_drops_the_event() {
        let mut s = SseSplitter::new(8);
        assert!(s.push(b"data: 0123456789").is_empty());
        assert!(s.overflowed());
        assert!(s.push(b"\n\n").is_empty());
    }

    #[test]
    fn data_extraction() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (b"data: {\"a\":1}\n\n", Some("{\"a\":1}")),
            (b"data:{\"a\":1}\n\n", Some("{\"a\":1}")),
            (b"data:  two\n\n", Some(" two")),
            (b"data: a\ndata: b\n\n", Some("a\nb")),
            (b"event: x\nid: 3\n\n", None),
            (b"id: 1\ndata:\n\n", Some("")),
            (b"data\n\n", Some("")),
        ];
        for (raw, want) in cases {
            assert_eq!(
                event_data(raw).as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
