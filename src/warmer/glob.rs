//! Tag glob patterns (`spec.tags.include` / `exclude`), matched without building a regex.
//!
//! Syntax: `*` any run of characters (`**` is the same), `?` one character, `[abc]` /
//! `[a-z]` one character of a set, `[!a-z]` / `[^a-z]` one character outside it (a `]` or
//! `-` first in the set is literal), `{a,b}` either alternative (alternatives nest; an empty
//! one matches the empty string), `\c` the character `c` itself. Everything else is literal and
//! case-sensitive; a pattern matches the whole tag.
//!
//! A compiled pattern holds its tokens only: a few bytes per character. (A regex-based glob
//! set cost tens of KiB per watch, most of the controller's memory at 1,000 watches.)
//! Matching is linear in the tag per star-free stretch: each alternative is matched by the
//! greedy star algorithm, which backtracks only to the last `*`.

use std::fmt;

/// Alternatives one pattern may expand to (`{a,b}{c,d}` is four); more is refused, so a
/// pattern cannot make matching or memory blow up.
pub(crate) const MAX_ALTERNATIVES: usize = 256;

/// How deep `{...}` groups may nest.
pub(crate) const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Run,
    Class {
        negated: bool,
        ranges: Box<[(char, char)]>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::One => true,
            Token::Run => unreachable!("a run is not one character"),
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Why a pattern does not parse (position counted in characters from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobError(String);

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One compiled tag pattern: the token sequences it expands to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    alternatives: Box<[Box<[Token]>]>,
}

/// A parsed stretch of pattern: a sequence of pieces, each a token or a group of
/// alternative sequences.
enum Piece {
    Token(Token),
    Group(Vec<Vec<Piece>>),
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::iter::Enumerate<std::str::Chars<'a>>>,
}

impl Parser<'_> {
    /// Parses until the end, or (inside a group, `depth` > 0) until `,` or `}`, which it
    /// leaves unread.
    fn sequence(&mut self, depth: usize) -> Result<Vec<Piece>, GlobError> {
        let mut out = Vec::new();
        while let Some(&(at, c)) = self.chars.peek() {
            match c {
                ',' | '}' if depth > 0 => break,
                '}' => return Err(GlobError(format!("'}}' at {at} closes no '{{'"))),
                _ => {}
            }
            self.chars.next();
            out.push(match c {
                '*' => {
                    while self.chars.peek().is_some_and(|&(_, c)| c == '*') {
                        self.chars.next();
                    }
                    Piece::Token(Token::Run)
                }
                '?' => Piece::Token(Token::One),
                '[' => Piece::Token(self.class(at)?),
                '{' if depth >= MAX_DEPTH => {
                    return Err(GlobError(format!(
                        "'{{' at {at} nests groups deeper than {MAX_DEPTH}"
                    )));
                }
                '{' => Piece::Group(self.group(at, depth + 1)?),
                '\\' => match self.chars.next() {
                    Some((_, c)) => Piece::Token(Token::Char(c)),
                    None => return Err(GlobError(format!("'\\' at {at} escapes nothing"))),
                },
                c => Piece::Token(Token::Char(c)),
            });
        }
        Ok(out)
    }

    /// After `{` (at `open`): alternatives up to the matching `}`.
    fn group(&mut self, open: usize, depth: usize) -> Result<Vec<Vec<Piece>>, GlobError> {
        let mut alternatives = Vec::new();
        loop {
            alternatives.push(self.sequence(depth)?);
            match self.chars.next() {
                Some((_, ',')) => {}
                Some((_, '}')) => return Ok(alternatives),
                _ => return Err(GlobError(format!("'{{' at {open} is never closed"))),
            }
        }
    }

    /// After `[` (at `open`): the set up to `]`.
    fn class(&mut self, open: usize) -> Result<Token, GlobError> {
        let negated = matches!(self.chars.peek(), Some((_, '!' | '^')));
        if negated {
            self.chars.next();
        }
        let mut ranges: Vec<(char, char)> = Vec::new();
        // A `]` or `-` first is literal; `x-y` is a range; a `-` last is literal.
        let (mut first, mut in_range) = (true, false);
        loop {
            let Some((_, c)) = self.chars.next() else {
                return Err(GlobError(format!("'[' at {open} is never closed")));
            };
            match c {
                ']' if !first => break,
                '-' if !first && !in_range => in_range = true,
                c if in_range => {
                    let last = ranges.last_mut().expect("a range follows a character");
                    if c < last.0 {
                        return Err(GlobError(format!(
                            "range '{}-{c}' in the set at {open} runs backwards",
                            last.0
                        )));
                    }
                    last.1 = c;
                    in_range = false;
                }
                c => ranges.push((c, c)),
            }
            first = false;
        }
        if in_range {
            ranges.push(('-', '-'));
        }
        Ok(Token::Class {
            negated,
            ranges: ranges.into_boxed_slice(),
        })
    }
}

/// Every token sequence `pieces` expands to, at most `MAX_ALTERNATIVES`.
fn expand(pieces: Vec<Piece>) -> Result<Vec<Vec<Token>>, GlobError> {
    let mut out: Vec<Vec<Token>> = vec![Vec::new()];
    for piece in pieces {
        match piece {
            Piece::Token(t) => out.iter_mut().for_each(|seq| seq.push(t.clone())),
            Piece::Group(alternatives) => {
                let mut tails = Vec::new();
                for a in alternatives {
                    tails.extend(expand(a)?);
                }
                if out.len().saturating_mul(tails.len()) > MAX_ALTERNATIVES {
                    return Err(GlobError(format!(
                        "'{{...}}' groups expand to more than {MAX_ALTERNATIVES} alternatives"
                    )));
                }
                out = out
                    .iter()
                    .flat_map(|head| {
                        tails.iter().map(move |tail| {
                            let mut seq = head.clone();
                            seq.extend(tail.iter().cloned());
                            seq
                        })
                    })
                    .collect();
            }
        }
    }
    Ok(out)
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let mut parser = Parser {
            chars: pattern.chars().enumerate().peekable(),
        };
        let pieces = parser.sequence(0)?;
        let mut alternatives: Vec<Box<[Token]>> = expand(pieces)?
            .into_iter()
            .map(|seq| {
                let mut seq = seq;
                // `{*,}*` leaves adjacent runs; one is enough.
                seq.dedup_by(|b, a| *a == Token::Run && *b == Token::Run);
                seq.into_boxed_slice()
            })
            .collect();
        alternatives.dedup();
        Ok(Glob {
            alternatives: alternatives.into_boxed_slice(),
        })
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.alternatives.iter().any(|seq| matches(seq, text))
    }
}

/// Greedy star matching: every token but `*` takes exactly one character, so on a mismatch
/// it is enough to let the last `*` take one more character and go on from there.
fn matches(tokens: &[Token], text: &str) -> bool {
    let (mut t, mut s) = (0, 0);
    // (token after the last `*`, where the text resumes if the rest fails)
    let mut retry: Option<(usize, usize)> = None;
    loop {
        let next = text[s..].chars().next();
        match (tokens.get(t), next) {
            (Some(Token::Run), _) => {
                t += 1;
                retry = Some((t, s));
                continue;
            }
            (Some(tok), Some(c)) if tok.matches(c) => {
                t += 1;
                s += c.len_utf8();
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        match retry {
            Some((after, from)) => match text[from..].chars().next() {
                Some(c) => {
                    let from = from + c.len_utf8();
                    retry = Some((after, from));
                    (t, s) = (after, from);
                }
                None => return false,
            },
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).unwrap().is_match(text)
    }

    #[test]
    fn stars_and_single_characters() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("**", "x"));
        assert!(m("v*", "v1.2.3"));
        assert!(!m("v*", "1.2.3"));
        assert!(m("*-rc*", "v3-rc1"));
        assert!(m("*a*b*c", "xxaxxbxxbxc"));
        assert!(!m("*a*b*c", "xxaxxbxxbxcd"));
        assert!(m("sha256-*.sig", "sha256-abc.sig"));
        assert!(!m("sha256-*.sig", "sha256-abc.sig2"));
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v"));
        assert!(!m("v?", "v10"));
        assert!(m("?é*", "xé!"), "characters, not bytes");
        assert!(!m("abc", "ABC"));
    }

    #[test]
    fn sets_groups_and_escapes() {
        assert!(m("v[0-9]", "v7"));
        assert!(!m("v[0-9]", "va"));
        assert!(m("v[!0-9]", "va"));
        assert!(m("v[^0-9]", "va"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[-a]", "-"));
        assert!(m("[!]a]", "b"));
        assert!(!m("[!]a]", "]"));
        assert!(m("{v,release-}1*", "release-1.0"));
        assert!(m("{v,release-}1*", "v1"));
        assert!(!m("{v,release-}1*", "x1"));
        assert!(m("{a,{b,c}d}", "cd"));
        assert!(
            m("x{,y}", "x"),
            "an empty alternative matches the empty string"
        );
        assert!(m("a,b", "a,b"), "a comma outside a group is literal");
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("\\[x]", "[x]"));
    }

    #[test]
    fn bad_patterns_say_what_and_where() {
        let err = |p: &str| Glob::new(p).unwrap_err().to_string();
        assert_eq!(err("v[1"), "'[' at 1 is never closed");
        assert_eq!(err("[]"), "'[' at 0 is never closed");
        assert_eq!(err("a{b,c"), "'{' at 1 is never closed");
        assert_eq!(err("ab}"), "'}' at 2 closes no '{'");
        assert_eq!(err("x\\"), "'\\' at 1 escapes nothing");
        assert_eq!(err("[z-a]"), "range 'z-a' in the set at 0 runs backwards");
        assert!(err(&"{".repeat(40)).contains("deeper than 16"));
        let many = "{a,b}".repeat(9);
        assert!(err(&many).contains("more than 256"), "{}", err(&many));
    }

    #[test]
    fn stars_cannot_make_matching_explode() {
        let pattern = "*a".repeat(40) + "b";
        let text = "a".repeat(5_000);
        assert!(!m(&pattern, &text));
    }
}
