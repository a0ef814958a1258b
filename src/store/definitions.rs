//! The durable definitions (exchanges, queues, bindings, and runtime
//! parameters: users, permissions, vhosts, policies, limits) as the log knows
//! them: kept up to date by every definition record, restated as a snapshot
//! at the start of every segment, and rebuilt from those snapshots at replay.

use std::collections::BTreeMap;

use super::format::*;

/// Durable definitions, restated at the start of every segment.
#[derive(Debug, Default, Clone)]
pub struct Definitions {
    /// (vhost, name) -> declare record.
    pub exchanges: BTreeMap<(String, String), Record>,
    pub queues: BTreeMap<u32, Record>,
    pub bindings: Vec<BindingRecord>,
    /// (kind, key) -> JSON value.
    pub parameters: BTreeMap<(ParameterKind, String), bytes::Bytes>,
}

impl Definitions {
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::ExchangeDeclare { vhost, name, .. } => {
                self.exchanges.insert((vhost.clone(), name.clone()), record.clone());
            }
            Record::ExchangeDelete { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|b| {
                    b.vhost != *vhost
                        || b.source != *name
                            && !(b.destination_kind == DestinationKind::Exchange && b.destination == *name)
                });
            }
            Record::QueueDeclare { queue, .. } => {
                self.queues.insert(*queue, record.clone());
            }
            Record::QueueDelete { queue } => {
                if let Some(Record::QueueDeclare { vhost, name, .. }) = self.queues.remove(queue) {
                    self.bindings.retain(|b| {
                        !(b.vhost == vhost && b.destination_kind == DestinationKind::Queue && b.destination == name)
                    });
                }
            }
            Record::BindingAdd(b) if !self.bindings.contains(b) => self.bindings.push(b.clone()),
            Record::BindingRemove(b) => self.bindings.retain(|x| x != b),
            Record::Parameter { kind, key, value } => {
                self.parameters.insert((*kind, key.clone()), value.clone());
            }
            Record::ParameterDelete { kind, key } => {
                self.parameters.remove(&(*kind, key.clone()));
            }
            _ => {}
        }
    }

    pub(super) fn encode_snapshot(&self, out: &mut Vec<u8>) {
        for r in self.exchanges.values() {
            r.encode(FLAG_SNAPSHOT, out);
        }
        for r in self.queues.values() {
            r.encode(FLAG_SNAPSHOT, out);
        }
        for b in &self.bindings {
            Record::BindingAdd(b.clone()).encode(FLAG_SNAPSHOT, out);
        }
        for ((kind, key), value) in &self.parameters {
            Record::Parameter { kind: *kind, key: key.clone(), value: value.clone() }.encode(FLAG_SNAPSHOT, out);
        }
    }
}
