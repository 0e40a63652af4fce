//! Parsed TOML with positions: every value and key remembers the file and byte span it came
//! from, so errors found after `extends` merging still point into the right file.

use crate::error::Diagnostic;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A byte span in one of the loaded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Loc {
    pub file: usize,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Str(String),
    /// `None` when the integer does not fit an i64.
    Int(Option<i64>),
    Float,
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Table),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float => "a float",
            Value::Bool(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub loc: Loc,
    pub v: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_loc: Loc,
    pub node: Node,
}

/// A table's entries in source order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub entries: Vec<Entry>,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Overlay `other` on `self`: tables merge key by key, everything else (arrays included)
    /// is replaced by the later value.
    pub fn merge(&mut self, other: Table) {
        for e in other.entries {
            match self.entries.iter_mut().find(|x| x.key == e.key) {
                Some(mine) => match (&mut mine.node.v, e.node.v) {
                    (Value::Table(a), Value::Table(b)) => {
                        a.merge(b);
                        mine.node.loc = e.node.loc;
                        mine.key_loc = e.key_loc;
                    }
                    (_, v) => {
                        mine.node = Node { loc: e.node.loc, v };
                        mine.key_loc = e.key_loc;
                    }
                },
                None => self.entries.push(e),
            }
        }
    }
}

pub(crate) struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

/// Every file read while loading one profile (the profile and what it extends).
#[derive(Default)]
pub(crate) struct Sources {
    pub files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, name: String, text: String) -> usize {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        self.files.push(SourceFile {
            name,
            text,
            line_starts,
        });
        self.files.len() - 1
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: usize, offset: usize) -> (usize, usize) {
        let f = &self.files[file];
        let mut offset = offset.min(f.text.len());
        while !f.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match f.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = f.line_starts[line];
        let col = f.text[start..offset].chars().count() + 1;
        (line + 1, col)
    }

    pub fn diag(&self, loc: Loc, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.line_col(loc.file, loc.start);
        Diagnostic {
            file: self.files[loc.file].name.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// Parse one file. Syntax errors come back as diagnostics; the tree is the parser's best
/// effort recovery and is only used to follow `extends`.
pub(crate) fn parse(sources: &Sources, file: usize) -> (Table, Vec<Diagnostic>) {
    let text = sources.files[file].text.as_str();
    let (root, errs) = DeTable::parse_recoverable(text);
    let diags = errs
        .iter()
        .map(|e| {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().trim_end_matches('.').to_string();
            sources.diag(
                Loc {
                    file,
                    start: span.start,
                    end: span.end,
                },
                format!("TOML syntax: {msg}; fix the syntax (see https://toml.io)"),
            )
        })
        .collect();
    (convert_table(file, root.get_ref()), diags)
}

fn loc_of<T>(file: usize, s: &Spanned<T>) -> Loc {
    let r = s.span();
    Loc {
        file,
        start: r.start,
        end: r.end,
    }
}

fn convert_table(file: usize, t: &DeTable<'_>) -> Table {
    let mut entries: Vec<Entry> = t
        .iter()
        .map(|(k, v)| Entry {
            key: k.get_ref().to_string(),
            key_loc: loc_of(file, k),
            node: convert(file, v),
        })
        .collect();
    entries.sort_by_key(|e| e.key_loc.start);
    Table { entries }
}

fn convert(file: usize, v: &Spanned<DeValue<'_>>) -> Node {
    let value = match v.get_ref() {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            Value::Int(i64::from_str_radix(&digits, i.radix()).ok())
        }
        DeValue::Float(_) => Value::Float,
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(a) => Value::Array(a.iter().map(|x| convert(file, x)).collect()),
        DeValue::Table(t) => Value::Table(convert_table(file, t)),
    };
    Node {
        loc: loc_of(file, v),
        v: value,
    }
}
