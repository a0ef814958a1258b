//! A stream consumer: where it starts (`x-stream-offset`), what it wants
//! (`x-stream-filter`, `x-stream-match-unfiltered`), whether the broker
//! keeps its offset (`x-stream-automatic-offset-tracking`, or an
//! `x-stream-offset` of void, as LavinMQ), and its cursor.

use std::sync::Arc;

use super::super::arguments::parse_max_age;
use super::super::error::{AmqpError, Result};
use super::super::message::Message;
use super::Stream;
use crate::protocol::{FieldTable, FieldValue};

/// The header a publisher sets to give a message a filter value.
pub const FILTER_VALUE_HEADER: &str = "x-stream-filter-value";

/// Where a consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained message.
    First,
    /// The newest message, then what follows.
    Last,
    /// Only messages published from now on (the default).
    Next,
    /// This offset (or the first retained one after it).
    Offset(u64),
    /// The first message published at or after this time (ms since the
    /// Unix epoch).
    Time(u64),
}

impl StartAt {
    /// The offset this spec names in `stream`.
    pub fn resolve(self, stream: &Stream) -> u64 {
        match self {
            StartAt::First => stream.first_offset(),
            StartAt::Last => stream.last_offset().unwrap_or(stream.next_offset()),
            StartAt::Next => stream.next_offset(),
            StartAt::Offset(n) => n.clamp(stream.first_offset(), stream.next_offset()),
            StartAt::Time(ms) => stream.offset_at_time(ms),
        }
    }
}

/// The stream arguments of a basic.consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumeArgs {
    pub start: StartAt,
    /// Filter values the consumer wants; None for every message.
    pub filters: Option<Vec<String>>,
    /// With filters: also messages published without a filter value.
    pub match_unfiltered: bool,
    /// The broker keeps the consumer's offset under its tag.
    pub track: bool,
}

impl StreamConsumeArgs {
    /// Reads and checks them; `queue` names the stream in errors.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str, now_ms: u64) -> Result<StreamConsumeArgs> {
        let invalid = |detail: String| {
            AmqpError::precondition(format!(
                "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': {detail}"
            ))
        };
        let (start, void_offset) = match args.get("x-stream-offset") {
            None => (StartAt::Next, false),
            // LavinMQ: a void offset asks for tracking, from the start.
            Some(FieldValue::Void) => (StartAt::First, true),
            Some(FieldValue::Timestamp(seconds)) => (StartAt::Time(seconds.saturating_mul(1000)), false),
            Some(v @ FieldValue::LongStr(_)) => match v.as_str() {
                Some("first") => (StartAt::First, false),
                Some("last") => (StartAt::Last, false),
                Some("next") => (StartAt::Next, false),
                Some(text) => match parse_max_age(text) {
                    Some(age) => (StartAt::Time(now_ms.saturating_sub(age)), false),
                    None => return Err(invalid(format!("{{invalid_stream_offset_arg,{{longstr,<<\"{text}\">>}}}}"))),
                },
                None => return Err(invalid("{invalid_stream_offset_arg,{longstr,<<>>}}".into())),
            },
            Some(v) => match v.as_i64() {
                Some(n) => (StartAt::Offset(n.max(0) as u64), false),
                None => {
                    let kind = super::super::arguments::type_name(v);
                    return Err(invalid(format!("{{invalid_stream_offset_arg,{{{kind},{v:?}}}}}")));
                }
            },
        };
        let automatic = match args.get("x-stream-automatic-offset-tracking") {
            Some(FieldValue::Bool(b)) => *b,
            Some(v) => v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("true")),
            None => false,
        };
        // As RabbitMQ 3.13: a string or an array of strings (other items
        // are ignored); x-stream-match-unfiltered only counts with filters.
        let filters = match args.get("x-stream-filter") {
            Some(FieldValue::Array(items)) => {
                Some(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect::<Vec<_>>())
            }
            Some(v @ FieldValue::LongStr(_)) => v.as_str().map(|s| vec![s.to_string()]),
            _ => None,
        };
        let match_unfiltered =
            filters.is_some() && matches!(args.get("x-stream-match-unfiltered"), Some(FieldValue::Bool(true)));
        Ok(StreamConsumeArgs { start, filters, match_unfiltered, track: void_offset || automatic })
    }
}

/// A stream consumer's position and read-ahead.
#[derive(Debug)]
pub struct StreamCursor {
    /// The next offset to look at.
    pub next: u64,
    pub filters: Option<Vec<String>>,
    pub match_unfiltered: bool,
    /// The tag its offset is tracked under, when the broker tracks it.
    pub tracking: Option<Arc<str>>,
    /// Read-ahead looked at the offsets below this already.
    pub read_ahead_from: u64,
}

impl StreamCursor {
    pub fn new(next: u64, args: StreamConsumeArgs, tracking: Option<Arc<str>>) -> StreamCursor {
        StreamCursor {
            next,
            filters: args.filters,
            match_unfiltered: args.match_unfiltered,
            tracking,
            read_ahead_from: next,
        }
    }

    /// Whether the consumer wants this message, by its filter value.
    pub fn wants(&self, message: &Message) -> bool {
        let Some(filters) = &self.filters else { return true };
        match filter_value(message) {
            Some(value) => filters.contains(&value),
            None => self.match_unfiltered,
        }
    }
}

/// The message's `x-stream-filter-value` header, when it is a string.
fn filter_value(message: &Message) -> Option<String> {
    let props = crate::protocol::BasicProperties::decode(message.properties.clone()).ok()?;
    props.headers?.get(FILTER_VALUE_HEADER)?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, FieldValue)]) -> Result<StreamConsumeArgs> {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(*k, v.clone());
        }
        StreamConsumeArgs::parse(&t, "s", "/", 10_000_000)
    }

    #[test]
    fn offset_specs() {
        let start = |v: FieldValue| parse(&[("x-stream-offset", v)]).map(|a| a.start);
        assert_eq!(parse(&[]).map(|a| (a.start, a.track)).ok(), Some((StartAt::Next, false)));
        assert_eq!(start(FieldValue::string("first")).ok(), Some(StartAt::First));
        assert_eq!(start(FieldValue::string("last")).ok(), Some(StartAt::Last));
        assert_eq!(start(FieldValue::I64(42)).ok(), Some(StartAt::Offset(42)));
        assert_eq!(start(FieldValue::I32(7)).ok(), Some(StartAt::Offset(7)));
        assert_eq!(start(FieldValue::Timestamp(1_700)).ok(), Some(StartAt::Time(1_700_000)));
        assert_eq!(start(FieldValue::string("1h")).ok(), Some(StartAt::Time(10_000_000 - 3_600_000)));
        assert!(start(FieldValue::string("yesterday")).is_err());
        assert_eq!(
            parse(&[("x-stream-offset", FieldValue::Void)]).map(|a| (a.start, a.track)).ok(),
            Some((StartAt::First, true))
        );
        let auto = parse(&[("x-stream-automatic-offset-tracking", FieldValue::Bool(true))]);
        assert_eq!(auto.map(|a| (a.start, a.track)).ok(), Some((StartAt::Next, true)));
    }

    #[test]
    fn filters() {
        let a = parse(&[("x-stream-filter", FieldValue::string("eu"))]).ok();
        assert_eq!(a.map(|a| (a.filters, a.match_unfiltered)), Some((Some(vec!["eu".to_string()]), false)));
        let list = FieldValue::Array(vec![FieldValue::string("a"), FieldValue::I32(3), FieldValue::string("b")]);
        let a = parse(&[("x-stream-filter", list), ("x-stream-match-unfiltered", FieldValue::Bool(true))]).ok();
        assert_eq!(a.map(|a| (a.filters, a.match_unfiltered)), Some((Some(vec!["a".into(), "b".into()]), true)));
        // Without filters, match-unfiltered means nothing.
        let a = parse(&[("x-stream-match-unfiltered", FieldValue::Bool(true))]).ok();
        assert_eq!(a.map(|a| (a.filters, a.match_unfiltered)), Some((None, false)));
    }
}
