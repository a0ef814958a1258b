//! Exchanges, their bindings, and the four routing algorithms
//! (direct, fanout, topic, headers).

use crate::protocol::{FieldTable, FieldValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads: a queue, or another exchange (exchange.bind).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Queue(_) => "queue",
            Destination::Exchange(_) => "exchange",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// Bindings with this exchange as their source.
    pub bindings: Vec<Binding>,
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Exchange { name: name.to_string(), kind, durable, auto_delete, internal, arguments, bindings: Vec::new() }
    }

    /// Pushes the destinations this exchange sends a message to.
    pub fn route<'a>(&'a self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<&'a Destination>) {
        for b in &self.bindings {
            let hit = match self.kind {
                ExchangeKind::Direct => b.routing_key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(&b.routing_key, routing_key),
                ExchangeKind::Headers => headers_match(&b.arguments, headers),
            };
            if hit {
                out.push(&b.destination);
            }
        }
    }
}

/// Topic matching: words are separated by '.', `*` matches exactly one word
/// and `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    // matches[j]: the pattern prefix processed so far matches key[..j].
    let mut matches = vec![false; key.len() + 1];
    matches[0] = true;
    for word in pattern {
        let mut next = vec![false; key.len() + 1];
        match word {
            "#" => {
                let mut reachable = false;
                for j in 0..=key.len() {
                    reachable |= matches[j];
                    next[j] = reachable;
                }
            }
            _ => {
                for j in 0..key.len() {
                    if matches[j] && (word == "*" || word == key[j]) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        matches = next;
    }
    matches[key.len()]
}

/// Headers matching with `x-match` = `all` (default), `any`, `all-with-x` or
/// `any-with-x`. A binding value of type void only asks for the key to be
/// present. Keys starting with `x-` take part only in the `-with-x` modes.
pub fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding.get("x-match").and_then(FieldValue::as_str).unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::new();
    let headers = headers.unwrap_or(&empty);
    let mut considered = binding.iter().filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-"))).peekable();
    if considered.peek().is_none() {
        return !any;
    }
    let mut hit_one = false;
    for (key, expected) in considered {
        let ok = match (headers.get(key), expected) {
            (Some(_), FieldValue::Void) => true,
            (Some(actual), expected) => values_equal(actual, expected),
            (None, _) => false,
        };
        if any && ok {
            return true;
        }
        if !any && !ok {
            return false;
        }
        hit_one |= ok;
    }
    !any || hit_one
}

/// Header values compare by meaning: clients encode the same integer with
/// different widths (pika sends 'l', lapin may send 'I').
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_table_from_the_tutorial() {
        let cases = [
            ("*.orange.*", "quick.orange.rabbit", true),
            ("*.*.rabbit", "lazy.pink.rabbit", true),
            ("lazy.#", "lazy", true),
            ("lazy.#", "lazy.orange.new.rabbit", true),
            ("*.orange.*", "quick.orange.new.rabbit", false),
            ("*.orange.*", "orange", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("*", "", true),
            ("*.*", "a", false),
            ("#.#", "a.b", true),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            t.insert(*k, v.clone());
        }
        t
    }

    #[test]
    fn headers_all_and_any() {
        let msg = table(&[
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
            ("n", FieldValue::I64(5)),
        ]);
        let all = table(&[
            ("x-match", FieldValue::string("all")),
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]);
        let all_miss = table(&[("format", FieldValue::string("pdf")), ("type", FieldValue::string("log"))]);
        let any = table(&[
            ("x-match", FieldValue::string("any")),
            ("format", FieldValue::string("zip")),
            ("type", FieldValue::string("report")),
        ]);
        let any_miss = table(&[("x-match", FieldValue::string("any")), ("format", FieldValue::string("zip"))]);
        let width = table(&[("n", FieldValue::I32(5))]);
        let presence = table(&[("n", FieldValue::Void)]);
        assert!(headers_match(&all, Some(&msg)));
        assert!(!headers_match(&all_miss, Some(&msg)));
        assert!(headers_match(&any, Some(&msg)));
        assert!(!headers_match(&any_miss, Some(&msg)));
        assert!(headers_match(&width, Some(&msg)));
        assert!(headers_match(&presence, Some(&msg)));
        assert!(!headers_match(&all, None));
    }
}
