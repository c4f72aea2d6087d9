//! Consuming the bank's event stream safely, the one way every internal
//! consumer does it (the projector, and each service that turns events into
//! something of its own).
//!
//! A message on the stream is a signed batch of event envelopes (or, on
//! streams made before partitions, one envelope). A consumer must:
//!
//! - believe an event only under a valid signature, published on its own
//!   account's subject ([`events_of`]);
//! - apply each account's events in version order, each once: an event at or
//!   below the account's stored head is a duplicate, one beyond the next is a
//!   gap to wait out, and the next one must chain to the stored head's hash
//!   ([`place`]);
//! - acknowledge a message only once its effects are durable, and apply a
//!   message whole or not at all.
//!
//! [`run`] does all of that for a [`Sink`]: the consumer's store, which
//! reports the heads it holds and applies a batch of events (with their
//! heads) atomically. See the README for a short example.

mod check;
mod consume;

pub use check::{Event, Head, Place, Refusal, account_of, chains_to, events_of, occurred_at, place};
pub use consume::{Options, Sink, durable_consumer, run};
