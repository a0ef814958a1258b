//! The one summary line a command prints: `key=value` pairs (what the bench
//! scripts read) or, with `--json`, one JSON object with the same keys.
//!
//! Missing figures (no consumer, so no latency) are `-` in text and `null`
//! in JSON.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// One value of the summary.
pub enum Value {
    Text(String),
    Int(u64),
    /// A float and the decimals to print it with.
    Num(f64, usize),
    Missing,
}

/// An ordered list of named values.
#[derive(Default)]
pub struct Summary(Vec<(&'static str, Value)>);

impl Summary {
    pub fn text(&mut self, key: &'static str, v: impl Into<String>) -> &mut Self {
        self.0.push((key, Value::Text(v.into())));
        self
    }

    pub fn int(&mut self, key: &'static str, v: u64) -> &mut Self {
        self.0.push((key, Value::Int(v)));
        self
    }

    pub fn num(&mut self, key: &'static str, v: Option<f64>, decimals: usize) -> &mut Self {
        self.0.push((key, v.filter(|x| x.is_finite()).map_or(Value::Missing, |x| Value::Num(x, decimals))));
        self
    }

    /// p50 and p99 of a latency histogram (us) as `<prefix>p50_ms` and
    /// `<prefix>p99_ms`; missing when it holds no sample.
    pub fn percentiles(&mut self, p50: &'static str, p99: &'static str, h: Option<&Histogram<u64>>) -> &mut Self {
        let at = |q: f64| h.filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q) as f64 / 1000.0);
        self.num(p50, at(0.50), 3).num(p99, at(0.99), 3)
    }

    pub fn render(&self, json: bool) -> String {
        let mut out = String::new();
        if json {
            out.push('{');
        }
        for (i, (key, value)) in self.0.iter().enumerate() {
            let v = match value {
                Value::Text(s) if json => quote(s),
                Value::Text(s) => s.replace(char::is_whitespace, "_"),
                Value::Int(n) => n.to_string(),
                Value::Num(x, d) => format!("{x:.d$}"),
                Value::Missing if json => "null".into(),
                Value::Missing => "-".into(),
            };
            let sep = if i == 0 {
                ""
            } else if json {
                ","
            } else {
                " "
            };
            if json {
                let _ = write!(out, "{sep}{}:{v}", quote(key));
            } else {
                let _ = write!(out, "{sep}{key}={v}");
            }
        }
        if json {
            out.push('}');
        }
        out
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json() {
        let mut s = Summary::default();
        s.text("scenario", "S1").num("pub_msg_s", Some(1234.4), 0).num("p50_ms", None, 3).int("sent", 7);
        assert_eq!(s.render(false), "scenario=S1 pub_msg_s=1234 p50_ms=- sent=7");
        assert_eq!(s.render(true), r#"{"scenario":"S1","pub_msg_s":1234,"p50_ms":null,"sent":7}"#);
        let mut q = Summary::default();
        q.text("error", "a \"b\"\n");
        assert_eq!(q.render(true), r#"{"error":"a \"b\"\u000a"}"#);
    }
}
