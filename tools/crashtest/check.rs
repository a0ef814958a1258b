//! The verdict on one cycle: what the broker promised before the crash
//! against what came back after the restart. Pure logic, no I/O, so it is
//! unit-tested on synthetic records.
//!
//! The promise, per queue copy of a message (a message routed to three
//! queues is three copies):
//!
//! - confirmed by the broker (basic.ack) and not acked by the consumer:
//!   must be present, with the exact body, properties and routing key it
//!   was published with ("expected"; missing ones are "lost");
//! - acked by the consumer: may come back, because an ack is not confirmed
//!   to the client and may not have been durable yet ("duplicates",
//!   reported, not a failure);
//! - published but never confirmed (or nacked): may or may not be present;
//! - anything else in a queue (never published in this cycle, routed to a
//!   queue it does not match, present twice) is "unexpected", a failure,
//!   as is a wrong body or property ("corrupt") and a missing durable
//!   exchange, queue or binding ("problems").
//!
//! Messages of one publisher must come back in publish order within a
//! queue (recovery replays in message-id order); an inversion is reported
//! as "reordered", a warning.

use std::collections::{HashMap, HashSet};

use crate::message::{EXCHANGE, Key, PROBE_ROUTING_KEY, QUEUES, Workload, identify, probe_id, routes};

/// Detail lines kept per report; counts stay exact beyond it.
const MAX_DETAILS: usize = 40;

/// What became of one publish, as the publisher saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Handed to the client library; no confirm arrived before the crash.
    Sent,
    /// The broker confirmed it (basic.ack).
    Confirmed,
    /// The broker refused it (basic.nack).
    Nacked,
}

/// What the clients did in one cycle.
#[derive(Debug, Default)]
pub struct CycleRecord {
    pub cycle: u32,
    /// Per publisher, the fate of each sequence number, in order. A message
    /// counts as sent from the moment the driver tries to publish it.
    pub publishers: Vec<Vec<Fate>>,
    /// (queue index, key) of every delivery the consumer received.
    pub received: HashSet<(usize, Key)>,
    /// (queue index, key) of every delivery the consumer acked or began to ack.
    pub acked: HashSet<(usize, Key)>,
    /// Deliveries during the run whose content was wrong, described.
    pub live_corrupt: Vec<String>,
    /// Deliveries during the run of messages not published in this cycle.
    pub live_unexpected: Vec<String>,
}

impl CycleRecord {
    pub fn published(&self) -> usize {
        self.publishers.iter().map(Vec::len).sum()
    }

    pub fn count(&self, fate: Fate) -> usize {
        self.publishers.iter().flatten().filter(|&&f| f == fate).count()
    }

    /// The fate of `key`, or None if it was never published in this cycle.
    pub fn fate(&self, key: Key) -> Option<Fate> {
        if key.cycle != self.cycle {
            return None;
        }
        self.publishers.get(key.publisher as usize)?.get(key.seq as usize).copied()
    }
}

/// One message found in a queue after the restart, in queue order.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Index into [`QUEUES`].
    pub queue: usize,
    pub message_id: Option<String>,
    pub exchange: String,
    pub routing_key: String,
    pub delivery_mode: Option<u8>,
    pub body: Vec<u8>,
}

/// Counts are of queue copies, except where said otherwise.
#[derive(Debug, Default)]
pub struct Report {
    /// Copies that had to be present (confirmed, not acked).
    pub expected: usize,
    /// Copies of this cycle's messages found (the probes not included).
    pub present: usize,
    pub lost: usize,
    pub corrupt: usize,
    pub duplicates: usize,
    pub unexpected: usize,
    /// Present although never confirmed (allowed).
    pub unconfirmed_present: usize,
    pub reordered: usize,
    /// Other broken promises: durable exchanges, queues or bindings that did
    /// not survive, message counts that do not match what could be read.
    pub problems: usize,
    /// Human-readable lines about each problem (at most [`MAX_DETAILS`]).
    pub details: Vec<String>,
    /// Problems not described because of the cap.
    pub undescribed: usize,
}

impl Report {
    /// True when a promise was broken.
    pub fn failed(&self) -> bool {
        self.lost + self.corrupt + self.unexpected + self.problems > 0
    }

    fn note(&mut self, line: String) {
        if self.details.len() < MAX_DETAILS {
            self.details.push(line);
        } else {
            self.undescribed += 1;
        }
    }

    /// A broken promise found while reading the queues back.
    pub fn problem(&mut self, what: String) {
        self.problems += 1;
        self.note(what);
    }
}

/// Compares what came back (`observed`, per queue in delivery order) with
/// what was promised. `probe_sent` says whether a probe was published
/// through the exchange after the restart and confirmed: then every queue
/// must hold it exactly once.
pub fn check(w: &Workload, record: &CycleRecord, observed: &[Observed], probe_sent: bool) -> Report {
    let mut report = Report::default();
    for problem in &record.live_corrupt {
        report.corrupt += 1;
        report.note(format!("during the run: {problem}"));
    }
    for problem in &record.live_unexpected {
        report.unexpected += 1;
        report.note(format!("during the run: {problem}"));
    }

    let probe = probe_id(record.cycle);
    let mut probes = [0usize; QUEUES.len()];
    let mut seen: HashSet<(usize, Key)> = HashSet::new();
    let mut last_seq: HashMap<(usize, u16), u32> = HashMap::new();
    for o in observed {
        let queue = QUEUES[o.queue].0;
        let Some(id) = o.message_id.as_deref() else {
            report.corrupt += 1;
            report.note(format!("{queue}: a message without message-id{}", describe_body(&o.body)));
            continue;
        };
        if id == probe {
            probes[o.queue] += 1;
            let mut problems = Vec::new();
            if o.body != w.probe_body(record.cycle) {
                problems.push("its body differs from the one published".to_string());
            }
            if o.routing_key != PROBE_ROUTING_KEY || o.exchange != EXCHANGE {
                problems.push(format!("it came from exchange '{}' with key '{}'", o.exchange, o.routing_key));
            }
            if !problems.is_empty() {
                report.corrupt += 1;
                report.note(format!("{queue}: probe {id}: {}", problems.join("; ")));
            }
            continue;
        }
        let Some(key) = Key::parse(id) else {
            report.corrupt += 1;
            report.note(format!("{queue}: unparsable message-id {id:?}{}", describe_body(&o.body)));
            continue;
        };
        let Some(fate) = record.fate(key) else {
            report.unexpected += 1;
            report.note(format!("{queue}: {key} was never published in cycle {}", record.cycle));
            continue;
        };
        let routing_key = w.routing_key(key);
        if !routes(routing_key)[o.queue] {
            report.unexpected += 1;
            report.note(format!("{queue}: {key} (routing key {routing_key}) does not belong in this queue"));
            continue;
        }
        if !seen.insert((o.queue, key)) {
            report.unexpected += 1;
            report.note(format!("{queue}: {key} is in the queue more than once"));
            continue;
        }
        report.present += 1;

        let last = last_seq.entry((o.queue, key.publisher)).or_insert(key.seq);
        if key.seq < *last {
            report.reordered += 1;
            report.note(format!(
                "{queue}: {key} came back after c{}-p{}-s{} (publish order broken)",
                key.cycle, key.publisher, *last
            ));
        }
        *last = (*last).max(key.seq);

        if let Some(problem) = content_problem(w, key, o) {
            report.corrupt += 1;
            report.note(format!("{queue}: {key}: {problem}"));
        }

        if record.acked.contains(&(o.queue, key)) {
            report.duplicates += 1;
        } else if fate != Fate::Confirmed {
            report.unconfirmed_present += 1;
        }
    }

    for (publisher, fates) in record.publishers.iter().enumerate() {
        for (seq, fate) in fates.iter().enumerate() {
            if *fate != Fate::Confirmed {
                continue;
            }
            let key = Key { cycle: record.cycle, publisher: publisher as u16, seq: seq as u32 };
            let routed = routes(w.routing_key(key));
            for (q, (queue, _)) in QUEUES.iter().enumerate() {
                if !routed[q] || record.acked.contains(&(q, key)) {
                    continue;
                }
                report.expected += 1;
                if !seen.contains(&(q, key)) {
                    report.lost += 1;
                    let history = if record.received.contains(&(q, key)) {
                        "delivered to the consumer before the crash, not acked"
                    } else {
                        "not delivered before the crash"
                    };
                    report.note(format!("LOST {key} from {queue}: confirmed, {history}"));
                }
            }
        }
    }

    for (q, (queue, binding)) in QUEUES.iter().enumerate() {
        match (probe_sent, probes[q]) {
            (true, 1) | (false, 0) => {}
            (true, 0) => report.problem(format!(
                "{queue}: the probe published through {EXCHANGE} after the restart did not arrive \
                 (binding '{binding}' lost?)"
            )),
            (_, n) => {
                report.unexpected += 1;
                report.note(format!("{queue}: the probe {probe} is in the queue {n} times"));
            }
        }
    }
    report
}

/// What is wrong with an observed copy of `key`, if anything.
pub fn content_problem(w: &Workload, key: Key, o: &Observed) -> Option<String> {
    let mut problems = Vec::new();
    if o.exchange != EXCHANGE {
        problems.push(format!("exchange is '{}', not '{EXCHANGE}'", o.exchange));
    }
    let routing_key = w.routing_key(key);
    if o.routing_key != routing_key {
        problems.push(format!("routing key is '{}', not '{routing_key}'", o.routing_key));
    }
    if o.delivery_mode != Some(2) {
        problems.push(format!("delivery mode is {:?}, not persistent (2)", o.delivery_mode));
    }
    let body = w.body(key);
    if o.body != body {
        let at = o.body.iter().zip(&body).position(|(a, b)| a != b).unwrap_or(o.body.len().min(body.len()));
        problems.push(format!(
            "body of {} bytes differs from the {} bytes published, from byte {at}{}",
            o.body.len(),
            body.len(),
            describe_body(&o.body)
        ));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Whose body this looks like, when it names itself.
fn describe_body(body: &[u8]) -> String {
    match identify(body) {
        Some(key) => format!(" (the body is intact and belongs to {key})"),
        None => format!(" ({} bytes)", body.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CYCLE: u32 = 4;

    fn workload() -> Workload {
        Workload { seed: 99, min_size: 0, max_size: 300, ack_percent: 50 }
    }

    fn key(publisher: u16, seq: u32) -> Key {
        Key { cycle: CYCLE, publisher, seq }
    }

    /// Two publishers, 40 messages each: the first 30 confirmed, then 5
    /// sent, then 5 nacked. The consumer acked what the workload says it acks
    /// for the first 20 of each publisher.
    fn record(w: &Workload) -> CycleRecord {
        let mut record = CycleRecord { cycle: CYCLE, ..Default::default() };
        for p in 0..2u16 {
            let mut fates = vec![Fate::Confirmed; 30];
            fates.extend([Fate::Sent; 5]);
            fates.extend([Fate::Nacked; 5]);
            record.publishers.push(fates);
            for seq in 0..20 {
                let k = key(p, seq);
                for (q, routed) in routes(w.routing_key(k)).into_iter().enumerate() {
                    if routed {
                        record.received.insert((q, k));
                        if w.acks(k, q) {
                            record.acked.insert((q, k));
                        }
                    }
                }
            }
        }
        record
    }

    fn copy(w: &Workload, q: usize, k: Key) -> Observed {
        Observed {
            queue: q,
            message_id: Some(k.to_string()),
            exchange: EXCHANGE.to_string(),
            routing_key: w.routing_key(k).to_string(),
            delivery_mode: Some(2),
            body: w.body(k),
        }
    }

    fn probe(w: &Workload, q: usize) -> Observed {
        Observed {
            queue: q,
            message_id: Some(probe_id(CYCLE)),
            exchange: EXCHANGE.to_string(),
            routing_key: PROBE_ROUTING_KEY.to_string(),
            delivery_mode: Some(2),
            body: w.probe_body(CYCLE),
        }
    }

    /// Exactly what must survive: confirmed and not acked, per queue in
    /// publish order, then the probe.
    fn survivors(w: &Workload, record: &CycleRecord) -> Vec<Observed> {
        let mut out = Vec::new();
        for q in 0..QUEUES.len() {
            for p in 0..2u16 {
                for seq in 0..30 {
                    let k = key(p, seq);
                    if routes(w.routing_key(k))[q] && !record.acked.contains(&(q, k)) {
                        out.push(copy(w, q, k));
                    }
                }
            }
            out.push(probe(w, q));
        }
        out
    }

    #[test]
    fn exactly_the_promised_messages_pass() {
        let w = workload();
        let record = record(&w);
        let observed = survivors(&w, &record);
        let report = check(&w, &record, &observed, true);
        assert!(!report.failed(), "{report:?}");
        assert!(report.expected > 50, "{report:?}");
        assert_eq!(report.present, report.expected);
        assert_eq!(report.present, observed.len() - QUEUES.len());
        assert_eq!((report.lost, report.corrupt, report.duplicates, report.unexpected), (0, 0, 0, 0));
    }

    #[test]
    fn a_missing_confirmed_message_is_lost() {
        let w = workload();
        let record = record(&w);
        let mut observed = survivors(&w, &record);
        // Drop one delivered-but-unacked copy and one never-delivered copy.
        let delivered = observed.iter().position(|o| Key::parse(o.message_id.as_deref().unwrap()).is_some()).unwrap();
        let gone = observed.remove(delivered);
        let never = observed
            .iter()
            .position(|o| o.message_id.as_deref().and_then(Key::parse).is_some_and(|k| k.seq >= 20))
            .unwrap();
        observed.remove(never);
        let report = check(&w, &record, &observed, true);
        assert!(report.failed());
        assert_eq!(report.lost, 2, "{report:?}");
        assert_eq!(report.present, report.expected - 2);
        let id = gone.message_id.unwrap();
        assert!(report.details.iter().any(|d| d.starts_with(&format!("LOST {id} from"))), "{:?}", report.details);
        assert!(report.details.iter().any(|d| d.contains("delivered to the consumer before the crash")));
        assert!(report.details.iter().any(|d| d.contains("not delivered before the crash")));
    }

    #[test]
    fn a_lost_multi_queue_copy_is_counted_per_queue() {
        let w = workload();
        let record = record(&w);
        // A confirmed, never-acked message that went to all three queues.
        let k = (20..30).map(|s| key(1, s)).find(|&k| w.routing_key(k) == "m.a.d").expect("an m.a.d message");
        let observed: Vec<Observed> =
            survivors(&w, &record).into_iter().filter(|o| o.message_id != Some(k.to_string())).collect();
        let report = check(&w, &record, &observed, true);
        assert_eq!(report.lost, 3, "{report:?}");
    }

    #[test]
    fn a_damaged_body_or_property_is_corrupt() {
        let w = workload();
        let record = record(&w);
        let mut observed = survivors(&w, &record);
        let i = observed.iter().position(|o| o.body.len() > 30).unwrap();
        observed[i].body[25] ^= 1;
        let j = observed.iter().rposition(|o| o.message_id.as_deref().and_then(Key::parse).is_some()).unwrap();
        observed[j].delivery_mode = Some(1);
        let report = check(&w, &record, &observed, true);
        assert!(report.failed());
        assert_eq!(report.corrupt, 2, "{report:?}");
        assert_eq!(report.lost, 0, "a corrupt copy is present, not lost");
        assert!(report.details.iter().any(|d| d.contains("from byte 25")), "{:?}", report.details);

        // A truncated body, and a body swapped with another message's.
        let mut observed = survivors(&w, &record);
        let i = observed.iter().position(|o| o.body.len() > 30).unwrap();
        observed[i].body.truncate(10);
        let other = key(1, 29);
        let j = observed
            .iter()
            .rposition(|o| {
                o.body.len() > 30 && o.message_id.as_deref().and_then(Key::parse).is_some_and(|k| k != other)
            })
            .unwrap();
        observed[j].body = w.body(other);
        let report = check(&w, &record, &observed, true);
        assert_eq!(report.corrupt, 2, "{report:?}");
    }

    #[test]
    fn a_message_without_its_id_is_corrupt() {
        let w = workload();
        let record = record(&w);
        let mut observed = survivors(&w, &record);
        let i = observed.iter().position(|o| o.body.len() > 30).unwrap();
        let id = observed[i].message_id.take().unwrap();
        let report = check(&w, &record, &observed, true);
        assert_eq!(report.corrupt, 1);
        assert_eq!(report.lost, 1);
        assert!(report.details.iter().any(|d| d.contains(&format!("belongs to {id}"))), "{:?}", report.details);
    }

    #[test]
    fn acked_messages_that_come_back_are_duplicates_not_failures() {
        let w = workload();
        let record = record(&w);
        let mut observed = survivors(&w, &record);
        let &(q, k) = record.acked.iter().next().expect("some acks");
        observed.insert(0, copy(&w, q, k));
        let report = check(&w, &record, &observed, true);
        assert!(!report.failed(), "{report:?}");
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.present, report.expected + 1);
    }

    #[test]
    fn unconfirmed_messages_may_or_may_not_come_back() {
        let w = workload();
        let record = record(&w);
        let mut observed = survivors(&w, &record);
        for seq in [30, 31, 37] {
            let k = key(0, seq);
            let q = routes(w.routing_key(k)).iter().position(|&r| r).unwrap();
            observed.push(copy(&w, q, k));
        }
        let report = check(&w, &record, &observed, true);
        assert!(!report.failed(), "{report:?}");
        assert_eq!(report.unconfirmed_present, 3);
    }

    #[test]
    fn messages_that_do_not_belong_are_unexpected() {
        let w = workload();
        let record = record(&w);
        let base = survivors(&w, &record);

        // From another cycle (say, a purge that did not hold).
        let mut observed = base.clone();
        observed.push(copy(&w, 0, Key { cycle: CYCLE - 1, publisher: 0, seq: 3 }));
        // Never published: beyond what publisher 1 sent, and a publisher that does not exist.
        observed.push(copy(&w, 0, key(1, 40)));
        observed.push(copy(&w, 0, key(2, 0)));
        let report = check(&w, &record, &observed, true);
        assert_eq!(report.unexpected, 3, "{report:?}");
        assert!(report.failed());

        // In a queue its routing key does not reach.
        let k = (0..30).map(|s| key(0, s)).find(|&k| w.routing_key(k) == "m.b.c").expect("an m.b.c message");
        let mut observed = base.clone();
        observed.push(copy(&w, 1, k));
        assert_eq!(check(&w, &record, &observed, true).unexpected, 1);

        // The same copy twice.
        let mut observed = base.clone();
        observed.push(base[0].clone());
        let report = check(&w, &record, &observed, true);
        assert_eq!(report.unexpected, 1, "{report:?}");
        assert_eq!(report.reordered, 0, "a repeat of the same key is not an inversion");
    }

    #[test]
    fn a_missing_probe_means_a_lost_binding() {
        let w = workload();
        let record = record(&w);
        let observed: Vec<Observed> = survivors(&w, &record)
            .into_iter()
            .filter(|o| !(o.queue == 2 && o.message_id.as_deref() == Some(&probe_id(CYCLE))))
            .collect();
        let report = check(&w, &record, &observed, true);
        assert!(report.failed());
        assert_eq!(report.problems, 1);
        assert!(report.details.iter().any(|d| d.contains("*.*.d")), "{:?}", report.details);

        let mut report = check(&w, &record, &survivors(&w, &record), true);
        assert!(!report.failed());
        report.problem("exchange gone".into());
        assert!(report.failed());
    }

    #[test]
    fn an_inversion_within_a_publisher_is_reported_as_reordered() {
        let w = workload();
        let record = record(&w);
        let mut observed = survivors(&w, &record);
        let in_all: Vec<usize> = (0..observed.len())
            .filter(|&i| observed[i].queue == 0 && observed[i].message_id.as_deref().and_then(Key::parse).is_some())
            .take(2)
            .collect();
        observed.swap(in_all[0], in_all[1]);
        let report = check(&w, &record, &observed, true);
        assert_eq!(report.reordered, 1, "{report:?}");
        assert!(!report.failed(), "order is a warning");
    }

    #[test]
    fn corruption_seen_during_the_run_fails_the_cycle() {
        let w = workload();
        let mut record = record(&w);
        let observed = survivors(&w, &record);
        record.live_corrupt.push("crashtest.a: c4-p0-s1: body differs".into());
        let report = check(&w, &record, &observed, true);
        assert!(report.failed());
        assert_eq!(report.corrupt, 1);
    }

    #[test]
    fn details_are_capped_but_counts_stay_exact() {
        let w = workload();
        let record = record(&w);
        let report = check(&w, &record, &[], false);
        assert_eq!(report.lost, report.expected);
        assert!(report.lost > MAX_DETAILS);
        assert_eq!(report.details.len(), MAX_DETAILS);
        assert_eq!(report.undescribed, report.lost - MAX_DETAILS);
    }
}
