//! The handlers of the method classes that work on an open channel, one
//! file per AMQP class (the channel class itself is in `super::channel`).
//! Each applies a method to the broker and queues the reply; the codec
//! already parsed it.

mod basic;
mod confirm_tx;
mod exchange;
mod queue;
