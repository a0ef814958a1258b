//! Publishing: route a message, append it to the log once for all the
//! durable queues it reaches, enqueue it, and deliver.

use super::*;

impl Broker {
    /// Routes a message and enqueues it on every queue it reaches. A
    /// persistent message reaching durable queues is appended to the log
    /// once, with the list of those queues; `Routed::durable_position` then
    /// says what must be durable before the publish may be confirmed.
    pub fn publish(&self, exchange: &str, headers: Option<&FieldTable>, message: Arc<Message>) -> Result<Routed> {
        let mut st = self.state.lock();
        if let Some(ex) = st.exchanges.get(exchange)
            && ex.internal
        {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '/'"
            )));
        }
        let targets = st.route(exchange, &message.routing_key, headers)?;
        let mut outcome = Routed::default();
        let size = message.body_len();
        let mut accepting: Vec<&String> = Vec::with_capacity(targets.len());
        let mut durable_ids: Vec<u32> = Vec::new();
        for name in &targets {
            let Some(q) = st.queues.get(name.as_str()) else { continue };
            if q.would_reject(size) {
                outcome.rejected = true;
                continue;
            }
            accepting.push(name);
            if message.persistent
                && let Some(id) = q.store_id
            {
                durable_ids.push(id);
            }
        }
        let now = queue::now_ms();
        let mut store_id = 0;
        if !durable_ids.is_empty() {
            let (id, end) = self
                .store
                .publish(&durable_ids, &message.exchange, &message.routing_key, &message.properties, &message.body)
                .map_err(store_failed)?;
            store_id = id;
            outcome.durable_position = Some(end);
        }
        for name in &accepting {
            let Some(q) = st.queues.get_mut(name.as_str()) else { continue };
            let id = if q.store_id.is_some() { store_id } else { 0 };
            let (_, dropped) = q.enqueue(message.clone(), id, now);
            outcome.routed = true;
            if let Some(qid) = q.store_id {
                let gone: Vec<u64> = dropped.iter().filter(|e| e.store_id != 0).map(|e| e.store_id).collect();
                if !gone.is_empty() {
                    self.store.ack(qid, &gone).map_err(store_failed)?;
                }
            }
        }
        for name in &accepting {
            st.drain(name, &self.store);
            if let Some(q) = st.queues.get_mut(name.as_str())
                && q.store_id.is_some()
            {
                q.page_out(|id| self.store.is_written(id));
            }
        }
        Ok(outcome)
    }
}
