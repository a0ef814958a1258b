//! Settling deliveries: basic.ack, nack, reject and recover, with one log
//! tombstone record per queue for a whole batch.

use super::*;

impl Broker {
    /// basic.ack.
    pub fn ack(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.settle(conn, channel, delivery_tag, multiple, Settle::Ack)
    }

    /// Consecutive basic.acks of one channel, as (delivery tag, multiple),
    /// settled under one hold of the lock: one log record per queue and
    /// one hand-out of waiting messages for all of them. An unknown tag
    /// ends the run: the acks before it are settled, its error returned,
    /// and the acks after it are not looked at (the channel closes), as
    /// if they had been settled one by one.
    pub fn ack_many(&self, conn: u64, channel: u16, acks: &[(u64, bool)]) -> Result<()> {
        self.settle_then(conn, channel, acks, Settle::Ack, || {})
    }

    /// basic.nack / basic.reject.
    pub fn reject(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        self.settle(conn, channel, delivery_tag, multiple, if requeue { Settle::Requeue } else { Settle::Discard })
    }

    /// basic.recover: every unacked message of the channel goes back to its
    /// queue, flagged redelivered.
    /// `reply` (basic.recover-ok) goes out before the redeliveries, which
    /// clients such as lapin require.
    pub fn recover(&self, conn: u64, channel: u16, reply: Option<&ConnectionHandle>) {
        let _ = self.settle_then(conn, channel, &[(0, true)], Settle::Requeue, || {
            if let Some(handle) = reply {
                handle.method(channel, BasicRecoverOk {});
            }
        });
    }

    /// Whether `delivery_tag` names an unsettled delivery of the channel (0
    /// with `multiple` means all of them): a transaction checks acks when
    /// they arrive, as RabbitMQ does.
    pub fn check_delivery_tag(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool) -> Result<()> {
        let st = self.state.read();
        let known = st.channel(conn, channel).is_some_and(|ch| {
            let ch = ch.lock();
            ch.unacked.contains_key(&delivery_tag) || ch.remote_unacked.contains_key(&delivery_tag)
        });
        if known || (multiple && delivery_tag == 0) {
            Ok(())
        } else {
            Err(AmqpError::precondition(format!("unknown delivery tag {delivery_tag}")))
        }
    }

    fn settle(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool, how: Settle) -> Result<()> {
        self.settle_then(conn, channel, &[(delivery_tag, multiple)], how, || {})
    }

    /// Settles the deliveries `tags` name, as (delivery tag, multiple),
    /// runs `before_redelivery`, then hands waiting messages to consumers
    /// that now have room. An unknown tag ends the run (see
    /// [`Broker::ack_many`]).
    fn settle_then(
        &self,
        conn: u64,
        channel: u16,
        tags: &[(u64, bool)],
        how: Settle,
        before_redelivery: impl FnOnce(),
    ) -> Result<()> {
        let st = self.state.read();
        let Some(cell) = st.channel(conn, channel) else { return Ok(()) };
        let mut settled: Vec<Unacked> = Vec::new();
        let mut remote_settled = Vec::new();
        let mut unknown: Option<AmqpError> = None;
        // The channel's part, done before any queue is locked (lock order).
        let (vhost, channel_prefetch) = {
            let mut ch = cell.lock();
            for &(delivery_tag, multiple) in tags {
                if let Err(e) = take_unacked(&mut ch, delivery_tag, multiple, (&mut settled, &mut remote_settled)) {
                    unknown = Some(e);
                    break;
                }
            }
            (ch.vhost.clone(), ch.channel_prefetch)
        };
        if !remote_settled.is_empty() {
            remote::settle_remote(remote_settled, how);
        }
        if settled.is_empty()
            && let Some(e) = unknown
        {
            return Err(e);
        }
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut departed: Vec<Departed> = Vec::new();
        let mut acked = 0;
        // Tracked stream offsets to move: (stream, tag, highest acked).
        let mut tracks: Vec<(Arc<str>, Arc<str>, u64)> = Vec::new();
        let Some(v) = st.vhosts.get(&vhost) else { return Ok(()) };
        // The queue locked for the entries before; the next entry is
        // mostly of the same queue.
        let mut held: Option<(&Arc<str>, parking_lot::MutexGuard<'_, Queue>)> = None;
        // The held queue's effects, carried out when it is let go.
        let mut fx = Effects::default();
        let mut logged = Ok(());
        let now = queue::now_ms();
        let mut replica_settled: Vec<(u64, Vec<u64>)> = Vec::new();
        for u in settled {
            if held.as_ref().is_none_or(|(name, _)| **name != u.queue) {
                // One queue's lock at a time: let go before taking the next.
                if let Some((_, q)) = held.take() {
                    logged = logged.and(carry_out(&q, &mut fx, &self.store, &mut departed));
                }
                held = v.queues.get_key_value(&u.queue).map(|(name, cell)| (name, cell.lock()));
            }
            let Some((_, q)) = held.as_mut() else { continue };
            if q.incarnation != u.incarnation {
                continue;
            }
            if !touched.contains(&u.queue) {
                touched.push(u.queue.clone());
            }
            if how == Settle::Ack {
                q.counters.ack += 1;
                acked += 1;
            }
            if q.is_stream() {
                // A stream keeps the message whatever the client says:
                // the consumer gets its credit back, a tracked offset moves.
                if let Some(tag) = &u.consumer_tag
                    && let Some(tracked) = stream::settled(&mut *q, (conn, channel), tag, how == Settle::Ack)
                {
                    let offset = u.entry.seq;
                    match tracks.iter_mut().find(|(s, t, _)| *s == u.queue && *t == tracked) {
                        Some(entry) => entry.2 = entry.2.max(offset),
                        None => tracks.push((u.queue.clone(), tracked, offset)),
                    }
                }
            } else if let Some(tag) = &u.consumer_tag
                && let Some(c) = q.consumer_mut(tag, conn, channel)
            {
                c.unacked = c.unacked.saturating_sub(1);
            }
            // A replicated queue's message that leaves it leaves every member.
            if how != Settle::Requeue
                && let Some(replica) = &q.replica
            {
                match replica_settled.iter_mut().find(|(group, _)| *group == replica.group) {
                    Some((_, positions)) => positions.push(u.entry.seq),
                    None => replica_settled.push((replica.group, vec![u.entry.seq])),
                }
            }
            q.apply(Command::Settle { entry: u.entry, how }, now, &mut fx);
        }
        if let Some((_, q)) = held.take() {
            logged = logged.and(carry_out(&q, &mut fx, &self.store, &mut departed));
        }
        for (queue, tag, offset) in tracks {
            if let Some(q) = v.queues.get(&queue) {
                stream::track(&mut q.lock(), tag, offset, &self.store);
            }
        }
        if let Some(router) = st.replica_router.get() {
            for (group, positions) in replica_settled {
                router.settle(group, positions);
            }
        }
        GlobalStats::add(&self.stats.acknowledged, acked);
        logged.map_err(store_failed)?;
        for d in departed {
            st.depart(d, &self.store);
        }
        before_redelivery();
        // A channel-wide prefetch (global=true) freed by these acks may let
        // the channel's consumers of other queues go on too.
        if channel_prefetch > 0
            && let Some(ch) = st.channel(conn, channel)
        {
            for q in ch.lock().consumers.values() {
                if !touched.contains(q) {
                    touched.push(q.clone());
                }
            }
        }
        for q in touched {
            st.drain(&vhost, &q, &self.store);
        }
        unknown.map_or(Ok(()), Err)
    }
}

/// Moves the deliveries one ack names out of the channel's unacked map
/// into `out`: `delivery_tag` alone, or with `multiple` every delivery up
/// to it (0: all of them).
/// A leader's deliveries (see [`remote`]) go to the second of `out`.
fn take_unacked(
    ch: &mut ChannelState,
    delivery_tag: u64,
    multiple: bool,
    out: (&mut Vec<Unacked>, &mut Vec<remote::RemoteUnacked>),
) -> Result<()> {
    let unknown = || AmqpError::precondition(format!("unknown delivery tag {delivery_tag}"));
    if multiple {
        if delivery_tag != 0
            && !ch.unacked.contains_key(&delivery_tag)
            && !ch.remote_unacked.contains_key(&delivery_tag)
        {
            return Err(unknown());
        }
        let upto = if delivery_tag == 0 { u64::MAX } else { delivery_tag };
        let rest = ch.unacked.split_off(&(upto.saturating_add(1)));
        out.0.extend(std::mem::replace(&mut ch.unacked, rest).into_values());
        if !ch.remote_unacked.is_empty() {
            let rest = ch.remote_unacked.split_off(&(upto.saturating_add(1)));
            out.1.extend(std::mem::replace(&mut ch.remote_unacked, rest).into_values());
        }
    } else if let Some(u) = ch.unacked.remove(&delivery_tag) {
        out.0.push(u);
    } else {
        out.1.push(ch.remote_unacked.remove(&delivery_tag).ok_or_else(unknown)?);
    }
    Ok(())
}
