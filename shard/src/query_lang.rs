//! The full-text query language: terms, quoted phrases, `AND` / `OR` / `NOT` (and a leading
//! `-`), parentheses, prefixes (`pay*`), `field:value` terms and `field:*` (the field exists).
//!
//! Juxtaposed terms are ANDed; `AND` binds tighter than `OR`; `NOT` applies to the term or group
//! after it. A syntax error names the character (counted from 1) where it was found, and never
//! echoes the query text (it may hold personal data).
//!
//! The parser only builds an [`Expr`]; what a field name means is decided where the expression
//! is evaluated (the shard index, or a brute-force oracle in tests).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A parsed query (serde: the node sends it to the replicas that answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// Every part matches.
    And(Vec<Expr>),
    /// At least one part matches.
    Or(Vec<Expr>),
    /// The part does not match.
    Not(Box<Expr>),
    /// Matches everything (`*`).
    All,
    /// One term, phrase or prefix, in the default text fields or in a named field.
    Match(Match),
}

/// One term of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// The field named before `:`, if any.
    pub field: Option<String>,
    /// The value: a word, the inside of a phrase, or the prefix without its `*`.
    pub value: String,
    /// How the value is matched.
    pub kind: MatchKind,
}

/// How a [`Match`] value is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchKind {
    /// An unquoted word (several tokens in it are matched as a phrase).
    Word,
    /// A quoted phrase: its tokens in order, adjacent.
    Phrase,
    /// The value's last token is a prefix (`pay*`).
    Prefix,
    /// `field:*`: the field is present.
    Exists,
}

/// A syntax error at a character position (1-based) of the query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Character position, counted from 1.
    pub position: usize,
    /// What was expected or found (never the query text itself).
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.position)
    }
}

impl std::error::Error for SyntaxError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    /// A leading `-` glued to the next term.
    Minus,
    Word(String),
    Phrase(String),
    /// `name:` glued to the value after it.
    Field(String),
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, SyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // True when the previous token was `name:` or `-`, so the next one must follow directly.
    while i < chars.len() {
        let c = chars[i];
        let pos = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push((pos, Tok::Open));
                i += 1;
            }
            ')' => {
                out.push((pos, Tok::Close));
                i += 1;
            }
            '"' => {
                let start = i;
                i += 1;
                let mut s = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                if i == chars.len() {
                    return Err(SyntaxError {
                        position: start + 1,
                        message: "unterminated phrase: the '\"' has no closing '\"'".into(),
                    });
                }
                i += 1;
                out.push((pos, Tok::Phrase(s)));
            }
            '-' if chars.get(i + 1).is_some_and(|n| !n.is_whitespace())
                && !matches!(out.last(), Some((_, Tok::Field(_)))) =>
            {
                out.push((pos, Tok::Minus));
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '"')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // `name:value`: the name is identifier-like and the value follows directly.
                if let Some((name, rest)) = word.split_once(':') {
                    if is_field_name(name) && !matches!(out.last(), Some((_, Tok::Field(_)))) {
                        out.push((pos, Tok::Field(name.to_string())));
                        if rest.is_empty() {
                            if i < chars.len() && chars[i] == '"' {
                                continue;
                            }
                            return Err(SyntaxError {
                                position: i + 1,
                                message: format!("expected a value after '{name}:'"),
                            });
                        }
                        out.push((
                            start + name.chars().count() + 2,
                            Tok::Word(rest.to_string()),
                        ));
                        continue;
                    }
                }
                let tok = match word.as_str() {
                    "AND" | "&&" => Tok::And,
                    "OR" | "||" => Tok::Or,
                    "NOT" => Tok::Not,
                    _ => Tok::Word(word),
                };
                out.push((pos, tok));
            }
        }
    }
    Ok(out)
}

/// Parses query text. Blank text is `Ok(None)`: no text condition.
pub fn parse(text: &str) -> Result<Option<Expr>, SyntaxError> {
    let tokens = lex(text)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let end = text.chars().count() + 1;
    let mut p = Parser {
        tokens,
        at: 0,
        end,
        depth: 0,
    };
    let expr = p.or()?;
    if let Some((pos, tok)) = p.tokens.get(p.at) {
        let message = match tok {
            Tok::Close => "unexpected ')' with no '(' before it".to_string(),
            _ => "unexpected token".to_string(),
        };
        return Err(SyntaxError {
            position: *pos,
            message,
        });
    }
    Ok(Some(expr))
}

/// Deepest nesting of parentheses and NOTs accepted (a bound on recursion).
const MAX_DEPTH: usize = 64;

struct Parser {
    tokens: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.tokens
            .get(self.at)
            .map(|(p, _)| *p)
            .unwrap_or(self.end)
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            parts.push(self.and_after("OR")?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Expr::All)
        } else {
            Expr::Or(parts)
        })
    }

    fn and_after(&mut self, op: &str) -> Result<Expr, SyntaxError> {
        if !self.starts_term() {
            return Err(SyntaxError {
                position: self.pos(),
                message: format!("expected a term after {op}"),
            });
        }
        self.and()
    }

    fn starts_term(&self) -> bool {
        matches!(
            self.peek(),
            Some(Tok::Open | Tok::Not | Tok::Minus | Tok::Word(_) | Tok::Phrase(_) | Tok::Field(_))
        )
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        if !self.starts_term() {
            let message = match self.peek() {
                Some(Tok::And) => "AND needs a term before it",
                Some(Tok::Or) => "OR needs a term before it",
                Some(Tok::Close) => "expected a term before ')'",
                _ => "expected a term",
            };
            return Err(SyntaxError {
                position: self.pos(),
                message: message.into(),
            });
        }
        let mut parts = vec![self.unary()?];
        loop {
            if self.peek() == Some(&Tok::And) {
                self.at += 1;
                if !self.starts_term() {
                    return Err(SyntaxError {
                        position: self.pos(),
                        message: "expected a term after AND".into(),
                    });
                }
                parts.push(self.unary()?);
            } else if self.starts_term() {
                parts.push(self.unary()?);
            } else {
                break;
            }
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Expr::All)
        } else {
            Expr::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if matches!(self.peek(), Some(Tok::Not | Tok::Minus)) {
            let op = if self.peek() == Some(&Tok::Not) {
                "NOT"
            } else {
                "-"
            };
            self.at += 1;
            if !self.starts_term() {
                return Err(SyntaxError {
                    position: self.pos(),
                    message: format!("expected a term after {op}"),
                });
            }
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SyntaxError {
                position: self.pos(),
                message: format!("the query nests deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let pos = self.pos();
        let Some((_, tok)) = self.tokens.get(self.at).cloned() else {
            return Err(SyntaxError {
                position: pos,
                message: "expected a term".into(),
            });
        };
        self.at += 1;
        match tok {
            Tok::Open => {
                self.enter()?;
                if self.peek() == Some(&Tok::Close) {
                    return Err(SyntaxError {
                        position: self.pos(),
                        message: "empty parentheses".into(),
                    });
                }
                let inner = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::Close) {
                    return Err(SyntaxError {
                        position: self.pos(),
                        message: format!("expected ')' to close the '(' opened at character {pos}"),
                    });
                }
                self.at += 1;
                Ok(inner)
            }
            Tok::Word(w) => word(None, w, pos),
            Tok::Phrase(p) => phrase(None, p, pos),
            Tok::Field(name) => match self.tokens.get(self.at).cloned() {
                Some((vpos, Tok::Word(w))) => {
                    self.at += 1;
                    word(Some(name), w, vpos)
                }
                Some((vpos, Tok::Phrase(p))) => {
                    self.at += 1;
                    phrase(Some(name), p, vpos)
                }
                _ => Err(SyntaxError {
                    position: self.pos(),
                    message: format!("expected a value after '{name}:'"),
                }),
            },
            Tok::Close => Err(SyntaxError {
                position: pos,
                message: "unexpected ')'".into(),
            }),
            Tok::And | Tok::Or | Tok::Not | Tok::Minus => Err(SyntaxError {
                position: pos,
                message: "expected a term".into(),
            }),
        }
    }
}

fn phrase(field: Option<String>, value: String, pos: usize) -> Result<Expr, SyntaxError> {
    if value.trim().is_empty() {
        return Err(SyntaxError {
            position: pos,
            message: "empty phrase".into(),
        });
    }
    Ok(Expr::Match(Match {
        field,
        value,
        kind: MatchKind::Phrase,
    }))
}

fn word(field: Option<String>, value: String, pos: usize) -> Result<Expr, SyntaxError> {
    if value == "*" {
        return Ok(match field {
            None => Expr::All,
            Some(_) => Expr::Match(Match {
                field,
                value: String::new(),
                kind: MatchKind::Exists,
            }),
        });
    }
    // A trailing `*` after a letter or digit is a prefix; elsewhere (`192.168.*.*`, a masked
    // value) it is part of the text.
    if let Some(stem) = value.strip_suffix('*') {
        if stem.chars().last().is_some_and(char::is_alphanumeric) && !stem.contains('*') {
            return Ok(Expr::Match(Match {
                field,
                value: stem.to_string(),
                kind: MatchKind::Prefix,
            }));
        }
    }
    if value.chars().all(|c| !c.is_alphanumeric()) && field.is_none() {
        return Err(SyntaxError {
            position: pos,
            message: "a term must contain a letter or digit".into(),
        });
    }
    Ok(Expr::Match(Match {
        field,
        value,
        kind: MatchKind::Word,
    }))
}

/// The tokens of `text` as the index's default text analyzer cuts them: runs of alphanumeric
/// characters, lower-cased, dropping tokens of 40 bytes or more (tantivy's `default` tokenizer:
/// `SimpleTokenizer`, `RemoveLongFilter::limit(40)`, `LowerCaser`). Returned with their positions.
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty() && t.len() < 40)
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(field: Option<&str>, value: &str, kind: MatchKind) -> Expr {
        Expr::Match(Match {
            field: field.map(str::to_string),
            value: value.into(),
            kind,
        })
    }

    #[test]
    fn precedence_grouping_and_negation() {
        let e = parse("payment failed OR (timeout AND NOT retry) -debug").unwrap();
        assert_eq!(
            e,
            Some(Expr::Or(vec![
                Expr::And(vec![
                    m(None, "payment", MatchKind::Word),
                    m(None, "failed", MatchKind::Word)
                ]),
                Expr::And(vec![
                    Expr::And(vec![
                        m(None, "timeout", MatchKind::Word),
                        Expr::Not(Box::new(m(None, "retry", MatchKind::Word)))
                    ]),
                    Expr::Not(Box::new(m(None, "debug", MatchKind::Word)))
                ])
            ]))
        );
    }

    #[test]
    fn fields_phrases_prefixes_and_exists() {
        let e = parse(r#"service:checkout level:"ERROR" pay* user_id:* "card declined""#)
            .unwrap()
            .unwrap();
        assert_eq!(
            e,
            Expr::And(vec![
                m(Some("service"), "checkout", MatchKind::Word),
                m(Some("level"), "ERROR", MatchKind::Phrase),
                m(None, "pay", MatchKind::Prefix),
                m(Some("user_id"), "", MatchKind::Exists),
                m(None, "card declined", MatchKind::Phrase),
            ])
        );
        // A masked value keeps its shape and is not a field or a prefix.
        assert_eq!(
            parse("<email:5f3a9c1e2b4d> 192.168.*.*").unwrap().unwrap(),
            Expr::And(vec![
                m(None, "<email:5f3a9c1e2b4d>", MatchKind::Word),
                m(None, "192.168.*.*", MatchKind::Word),
            ])
        );
        assert_eq!(
            parse("user_email:<email:5f3a9c1e2b4d>").unwrap().unwrap(),
            m(Some("user_email"), "<email:5f3a9c1e2b4d>", MatchKind::Word)
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let cases = [
            ("(payment failed", 16, "expected ')'"),
            ("payment)", 8, "unexpected ')'"),
            ("payment AND", 12, "expected a term after AND"),
            ("OR timeout", 1, "OR needs a term before it"),
            ("\"card declined", 1, "unterminated phrase"),
            ("service: x", 9, "expected a value after 'service:'"),
            ("NOT", 4, "expected a term after NOT"),
            ("()", 2, "empty parentheses"),
            ("a OR OR b", 6, "expected a term after OR"),
        ];
        for (text, position, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.position, position, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
        let deep = format!("{}x{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("nests deeper"));
    }

    #[test]
    fn blank_text_is_no_condition() {
        assert_eq!(parse("  ").unwrap(), None);
        assert_eq!(parse("*").unwrap(), Some(Expr::All));
    }

    #[test]
    fn tokens_follow_the_default_analyzer() {
        assert_eq!(
            tokens("Payment-Service: card_declined <email:5F3A>"),
            vec!["payment", "service", "card", "declined", "email", "5f3a"]
        );
        assert!(tokens(&"x".repeat(40)).is_empty());
    }
}
