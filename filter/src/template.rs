//! Matching resource URIs against allowed RFC 6570 URI templates.
//!
//! Why hand-written: the policy allows a resource template such as `test://template/{id}/data`,
//! and a `resources/read` for `test://template/123/data` must be allowed while
//! `test://template/../secret/data` must not. Only what MCP servers use is supported:
//!
//! - `{var}` (level 1, simple expansion): one or more characters, none of `/ ? #`.
//! - `{+var}` and `{#var}` (reserved expansion): one or more characters, `/` allowed, no `?`/`#`
//!   for `{+var}`.
//! - Any other operator (`{?q}`, `{/x}`, `{.x}`, `{;x}`, `{&x}`) or a malformed template never
//!   matches (fail closed); the template string itself can still be used verbatim.
//!
//! Every variable value is also refused if it contains `..` (also as `%2e%2e` or a mix: no
//! traversal through a template), a control character (raw or percent-escaped), whitespace,
//! `#`, `{` or `}`.
//!
//! Matching is a dynamic programme over positions (O(parts x length)), so a hostile URI cannot
//! make it slow.

/// A compiled URI template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    parts: Vec<Part>,
    /// False when the template uses an unsupported feature: it then matches nothing.
    supported: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A variable; `reserved` allows `/`.
    Var {
        reserved: bool,
        fragment: bool,
    },
}

/// Longest URI [`UriTemplate::matches`] considers (longer URIs never match).
pub const MAX_URI_LEN: usize = 8192;

impl UriTemplate {
    /// Compile `template`.
    pub fn parse(template: &str) -> Self {
        let mut parts = Vec::new();
        let mut supported = true;
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    if rest.contains('}') {
                        supported = false;
                    }
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(open) => {
                    let (lit, after) = rest.split_at(open);
                    if lit.contains('}') {
                        supported = false;
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(lit.to_owned()));
                    }
                    let Some(close) = after.find('}') else {
                        supported = false;
                        break;
                    };
                    let expr = after.get(1..close).unwrap_or("");
                    let (reserved, fragment, name) = match expr.as_bytes().first() {
                        Some(b'+') => (true, false, expr.get(1..).unwrap_or("")),
                        Some(b'#') => (true, true, expr.get(1..).unwrap_or("")),
                        _ => (false, false, expr),
                    };
                    let valid_name = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'%');
                    if !valid_name {
                        supported = false;
                    }
                    if fragment {
                        parts.push(Part::Literal("#".to_owned()));
                    }
                    // Two adjacent variables are ambiguous; refuse the template.
                    if matches!(parts.last(), Some(Part::Var { .. })) {
                        supported = false;
                    }
                    parts.push(Part::Var { reserved, fragment });
                    rest = after.get(close + 1..).unwrap_or("");
                }
            }
        }
        Self { parts, supported }
    }

    /// Does `uri` expand from this template?
    pub fn matches(&self, uri: &str) -> bool {
        if !self.supported || uri.len() > MAX_URI_LEN {
            return false;
        }
        let scan = Scan::new(uri);
        let n = uri.len();
        // reachable[p]: the parts so far can consume exactly uri[..p].
        let mut reachable = vec![false; n + 1];
        set(&mut reachable, 0);
        for part in &self.parts {
            let mut next = vec![false; n + 1];
            match part {
                Part::Literal(lit) => {
                    for p in 0..=n {
                        if at(&reachable, p)
                            && uri
                                .as_bytes()
                                .get(p..)
                                .is_some_and(|t| t.starts_with(lit.as_bytes()))
                        {
                            set(&mut next, p + lit.len());
                        }
                    }
                }
                Part::Var { reserved, fragment } => {
                    // q is reachable if some reachable p < q has limit(p) >= q.
                    let mut best: Option<usize> = None;
                    for q in 0..=n {
                        if best.is_some_and(|b| b >= q) {
                            set(&mut next, q);
                        }
                        if at(&reachable, q) {
                            let limit = scan.limit(q, *reserved, *fragment);
                            best = Some(best.map_or(limit, |b| b.max(limit)));
                        }
                    }
                }
            }
            reachable = next;
        }
        at(&reachable, n)
    }
}

fn at(v: &[bool], i: usize) -> bool {
    v.get(i).copied().unwrap_or(false)
}

fn set(v: &mut [bool], i: usize) {
    if let Some(x) = v.get_mut(i) {
        *x = true;
    }
}

/// Per-position facts about a URI, computed once, so that "the longest acceptable variable
/// value starting at p" is O(1).
struct Scan {
    /// First position >= p of a character no variable may contain.
    next_bad: Vec<usize>,
    /// First position >= p of a `/`.
    next_slash: Vec<usize>,
    /// First position >= p of a `?`.
    next_query: Vec<usize>,
    /// Smallest end of a `..` (after percent-decoding) that starts at >= p.
    next_dotdot_end: Vec<usize>,
}

impl Scan {
    fn new(uri: &str) -> Self {
        let b = uri.as_bytes();
        let n = b.len();
        let mut bad = vec![false; n];
        for (i, c) in uri.char_indices() {
            if c.is_control() || c.is_whitespace() || matches!(c, '#' | '{' | '}') {
                set(&mut bad, i);
            }
        }
        let hex = |i: usize| b.get(i).and_then(|x| (*x as char).to_digit(16));
        // Percent-escaped control characters are as bad as raw ones; `%2e` is a dot.
        let mut dot_len = vec![0usize; n + 1];
        for i in 0..n {
            match b.get(i) {
                Some(b'.') => {
                    if let Some(d) = dot_len.get_mut(i) {
                        *d = 1;
                    }
                }
                Some(b'%') => {
                    if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                        let v = h * 16 + l;
                        if v < 0x20 || v == 0x7f {
                            set(&mut bad, i);
                        }
                        if v == u32::from(b'.')
                            && let Some(d) = dot_len.get_mut(i)
                        {
                            *d = 3;
                        }
                    }
                }
                _ => {}
            }
        }
        let next_of = |flag: &dyn Fn(usize) -> bool| {
            let mut v = vec![n; n + 1];
            for i in (0..n).rev() {
                let after = v.get(i + 1).copied().unwrap_or(n);
                if let Some(x) = v.get_mut(i) {
                    *x = if flag(i) { i } else { after };
                }
            }
            v
        };
        let next_bad = next_of(&|i| at(&bad, i));
        let next_slash = next_of(&|i| b.get(i) == Some(&b'/'));
        let next_query = next_of(&|i| b.get(i) == Some(&b'?'));
        let mut next_dotdot_end = vec![usize::MAX; n + 2];
        for i in (0..n).rev() {
            let first = dot_len.get(i).copied().unwrap_or(0);
            let here = if first > 0 {
                let second = dot_len.get(i + first).copied().unwrap_or(0);
                if second > 0 {
                    i + first + second
                } else {
                    usize::MAX
                }
            } else {
                usize::MAX
            };
            let after = next_dotdot_end.get(i + 1).copied().unwrap_or(usize::MAX);
            if let Some(x) = next_dotdot_end.get_mut(i) {
                *x = here.min(after);
            }
        }
        Self {
            next_bad,
            next_slash,
            next_query,
            next_dotdot_end,
        }
    }

    /// The largest q such that `uri[p..q]` is an acceptable value (q may equal p, which the
    /// caller never accepts because it requires q > p).
    fn limit(&self, p: usize, reserved: bool, fragment: bool) -> usize {
        let get = |v: &Vec<usize>| v.get(p).copied().unwrap_or(p);
        let mut limit = get(&self.next_bad);
        if !reserved {
            limit = limit.min(get(&self.next_slash));
        }
        if !fragment {
            limit = limit.min(get(&self.next_query));
        }
        let dd = self.next_dotdot_end.get(p).copied().unwrap_or(usize::MAX);
        if dd != usize::MAX {
            limit = limit.min(dd - 1);
        }
        limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            (
                "test://template/{id}/data",
                "test://template/123/data",
                true,
            ),
            (
                "test://template/{id}/data",
                "test://template/abc-DEF_1.x/data",
                true,
            ),
            ("test://template/{id}/data", "test://template//data", false),
            (
                "test://template/{id}/data",
                "test://template/1/2/data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/../data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/%2e%2e/data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/%2E%2E/data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/123/data/x",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/123/dat",
                false,
            ),
            ("test://template/{id}/data", "test://other/123/data", false),
            (
                "test://template/{id}/data",
                "test://template/1 2/data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/1?x/data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/1%0a/data",
                false,
            ),
            (
                "test://template/{id}/data",
                "test://template/a%2Fb/data",
                true,
            ),
            (
                "test://template/{id}/data",
                "test://template/..%2Fsecret/data",
                false,
            ),
            ("file:///{+path}", "file:///etc/motd", true),
            ("file:///{+path}", "file:///a/../etc/passwd", false),
            ("file:///{+path}", "file:///a/%2e%2e/etc/passwd", false),
            ("file:///{+path}", "file:///a\\..\\b", false),
            ("x://{id}", "x://a..b", false),
            ("x://{id}", "x://a.%2Eb", false),
            ("x://{id}", "x://a.b.c", true),
            ("file:///{+path}", "file:///", false),
            ("file:///{path}", "file:///a/b", false),
            ("db://{table}/{row}", "db://users/42", true),
            ("db://{table}/{row}", "db://users/", false),
            ("db://{table}/{row}", "db:///42", false),
            ("x://{a}-{b}", "x://p-q-r", true), // backtracking: a=p, b=q-r
            ("x://{a}{b}", "x://ab", false),    // adjacent variables: unsupported
            ("x://{?q}", "x://?q=1", false),    // unsupported operator
            ("x://{a", "x://{a", false),        // malformed
            ("x://a}", "x://a}", false),        // malformed
            ("x://static", "x://static", true),
            ("x://static", "x://static2", false),
            ("x://{id}", "x://é", true),
            ("page{#frag}", "page#top", true),
        ];
        for (template, uri, want) in cases {
            assert_eq!(
                UriTemplate::parse(template).matches(uri),
                want,
                "{template} ~ {uri}"
            );
        }
    }

    #[test]
    fn long_uris_never_match() {
        let t = UriTemplate::parse("x://{+a}");
        let uri = format!("x://{}", "a".repeat(MAX_URI_LEN));
        assert!(!t.matches(&uri));
    }

    #[test]
    fn many_literal_occurrences_stay_fast() {
        // Backtracking would be cubic here; the DP is linear per part.
        let t = UriTemplate::parse("a{x}b{y}b{z}c");
        let uri = format!("a{}", "b".repeat(MAX_URI_LEN - 1));
        let started = std::time::Instant::now();
        assert!(!t.matches(&uri));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
