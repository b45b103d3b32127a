//! A small EDN reader, enough for Jepsen / Elle / Porcupine histories.
//!
//! Reads maps, vectors, lists, sets, keywords, symbols, strings (with the usual escapes),
//! characters (as one-character strings), integers (with an optional `N` suffix), floats
//! (optional `M` suffix), `nil`, `true`, `false`, `;` comments, commas as whitespace, `#_`
//! discards and tagged literals (`#inst "..."`: the tag is dropped, the value kept).
//! Limits: no ratios, no big integers beyond `i64` (they are an error), no reader
//! conditionals, no namespaced-map syntax (`#:ns{...}`).

use crate::value::{Value, F64};
use thiserror::Error;

/// A syntax error, with the 1-based line and column where it was found.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("EDN syntax error at line {line}, column {column}: {message}")]
pub struct EdnError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in bytes).
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

/// A top-level form together with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    /// 1-based line of the form's first character.
    pub line: usize,
    /// The datum.
    pub value: Value,
}

/// Parses exactly one EDN datum from `text` (surrounding whitespace and comments allowed).
pub fn parse_one(text: &str) -> Result<Value, EdnError> {
    let mut forms = parse_all(text)?;
    match forms.len() {
        1 => Ok(forms.remove(0).value),
        n => Err(EdnError { line: 1, column: 1, message: format!("expected one form, found {n}") }),
    }
}

/// Parses every top-level form of `text`.
pub fn parse_all(text: &str) -> Result<Vec<Form>, EdnError> {
    let mut r = Reader { s: text.as_bytes(), pos: 0, line: 1, line_start: 0 };
    let mut out = Vec::new();
    loop {
        r.skip_ws();
        if r.pos >= r.s.len() {
            return Ok(out);
        }
        let line = r.line;
        if let Some(value) = r.read_form()? {
            out.push(Form { line, value });
        }
    }
}

struct Reader<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
    line_start: usize,
}

fn is_delim(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b',' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b'"' | b';')
}

impl Reader<'_> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, EdnError> {
        Err(EdnError { line: self.line, column: self.pos - self.line_start + 1, message: message.into() })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.line_start = self.pos;
        }
        Some(b)
    }

    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            if b.is_ascii_whitespace() || b == b',' {
                self.bump();
            } else if b == b';' {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// Reads one form; `None` when the form was discarded with `#_`.
    fn read_form(&mut self) -> Result<Option<Value>, EdnError> {
        self.skip_ws();
        let Some(b) = self.peek() else {
            return self.err("unexpected end of input");
        };
        let v = match b {
            b'{' => {
                self.bump();
                let items = self.read_seq(b'}')?;
                if items.len() % 2 != 0 {
                    return self.err("map literal with an odd number of forms");
                }
                let mut entries = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Value::Map(entries)
            }
            b'[' => {
                self.bump();
                Value::Vec(self.read_seq(b']')?)
            }
            b'(' => {
                self.bump();
                Value::Vec(self.read_seq(b')')?)
            }
            b'"' => {
                self.bump();
                Value::Str(self.read_string()?)
            }
            b'#' => {
                self.bump();
                match self.peek() {
                    Some(b'{') => {
                        self.bump();
                        Value::Set(self.read_seq(b'}')?)
                    }
                    Some(b'_') => {
                        self.bump();
                        self.read_form()?;
                        return Ok(None);
                    }
                    _ => {
                        // Tagged literal: read the tag symbol, keep the value.
                        let tag = self.read_token();
                        if tag.is_empty() {
                            return self.err("bad dispatch character after #");
                        }
                        loop {
                            if let Some(v) = self.read_form()? {
                                break v;
                            }
                        }
                    }
                }
            }
            b':' => {
                self.bump();
                let tok = self.read_token();
                if tok.is_empty() {
                    return self.err("empty keyword");
                }
                Value::Keyword(tok)
            }
            b'\\' => {
                self.bump();
                let tok = self.read_token();
                let c = match tok.as_str() {
                    "newline" => "\n".to_string(),
                    "space" => " ".to_string(),
                    "tab" => "\t".to_string(),
                    "return" => "\r".to_string(),
                    "" => match self.bump() {
                        Some(c) => (c as char).to_string(),
                        None => return self.err("unterminated character literal"),
                    },
                    t => t.to_string(),
                };
                Value::Str(c)
            }
            b')' | b']' | b'}' => return self.err(format!("unexpected '{}'", b as char)),
            _ => {
                let tok = self.read_token();
                self.atom(&tok)?
            }
        };
        Ok(Some(v))
    }

    fn read_seq(&mut self, close: u8) -> Result<Vec<Value>, EdnError> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return self.err(format!("unterminated collection, expected '{}'", close as char)),
                Some(b) if b == close => {
                    self.bump();
                    return Ok(items);
                }
                Some(_) => {
                    if let Some(v) = self.read_form()? {
                        items.push(v);
                    }
                }
            }
        }
    }

    fn read_token(&mut self) -> String {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if is_delim(b) {
                break;
            }
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    fn read_string(&mut self) -> Result<String, EdnError> {
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.bump() else {
                return self.err("unterminated string");
            };
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.bump() else {
                        return self.err("unterminated string escape");
                    };
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'u' => {
                            let end = self.pos + 4;
                            let hex = self
                                .s
                                .get(self.pos..end)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32);
                            let Some(c) = hex else {
                                return self.err("bad \\u escape");
                            };
                            self.pos = end;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        other => return self.err(format!("unknown escape \\{}", other as char)),
                    }
                }
                _ => out.push(b),
            }
        }
        match String::from_utf8(out) {
            Ok(s) => Ok(s),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    fn atom(&self, tok: &str) -> Result<Value, EdnError> {
        match tok {
            "nil" => return Ok(Value::Nil),
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            _ => {}
        }
        let bytes = tok.as_bytes();
        let numeric = matches!(bytes, [b'0'..=b'9', ..] | [b'+' | b'-', b'0'..=b'9', ..]);
        if !numeric {
            return Ok(Value::Symbol(tok.to_string()));
        }
        let body = tok.strip_suffix('N').unwrap_or(tok);
        if let Ok(i) = body.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        let body = tok.strip_suffix('M').unwrap_or(tok);
        match body.parse::<f64>() {
            Ok(f) if body.contains(['.', 'e', 'E']) => Ok(Value::Float(F64(f))),
            _ => self.err(format!("unsupported number literal {tok:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(s: &str) -> Value {
        Value::Keyword(s.into())
    }

    #[test]
    fn reads_a_jepsen_op_map() {
        let v = parse_one(
            r#"{:index 3, :time 0, :type :ok, :process 0, :f :txn, :value [[:append :x 1] [:r :y [1 2]] [:r 5 nil]]}"#,
        )
        .unwrap();
        assert_eq!(v.get("type"), Some(&kw("ok")));
        assert_eq!(v.get("index"), Some(&Value::Int(3)));
        let mops = v.get("value").unwrap().as_vec().unwrap();
        assert_eq!(mops.len(), 3);
        assert_eq!(mops[1], Value::Vec(vec![kw("r"), kw("y"), Value::Vec(vec![Value::Int(1), Value::Int(2)])]));
        assert_eq!(mops[2].as_vec().unwrap()[2], Value::Nil);
    }

    #[test]
    fn comments_commas_sets_discards_and_tags() {
        let forms = parse_all(
            "; header\n{:a 1 :b #{1 2}}, ; trailing\n#_ {:skipped true}\n[1 (2 3) \"s\\\"q\" \\c] #inst \"2020\" -7 1.5 12N",
        )
        .unwrap();
        assert_eq!(forms.len(), 6);
        assert_eq!(forms[0].line, 2);
        assert_eq!(forms[0].value.get("b"), Some(&Value::Set(vec![Value::Int(1), Value::Int(2)])));
        assert_eq!(
            forms[1].value,
            Value::Vec(vec![
                Value::Int(1),
                Value::Vec(vec![Value::Int(2), Value::Int(3)]),
                Value::Str("s\"q".into()),
                Value::Str("c".into()),
            ])
        );
        assert_eq!(forms[2].value, Value::Str("2020".into()));
        assert_eq!(forms[3].value, Value::Int(-7));
        assert_eq!(forms[4].value, Value::Float(F64(1.5)));
        assert_eq!(forms[5].value, Value::Int(12));
    }

    #[test]
    fn symbols_and_keywords() {
        assert_eq!(parse_one("foo/bar").unwrap(), Value::Symbol("foo/bar".into()));
        assert_eq!(parse_one(":timed-out").unwrap(), kw("timed-out"));
        assert_eq!(parse_one("-").unwrap(), Value::Symbol("-".into()));
        assert_eq!(parse_one("12N").unwrap(), Value::Int(12));
    }

    #[test]
    fn errors_carry_positions() {
        let e = parse_all("{:a 1}\n{:b [1 2}").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse_all("{:a}").is_err());
        assert!(parse_all("\"open").is_err());
        assert!(parse_all(")").is_err());
    }
}
