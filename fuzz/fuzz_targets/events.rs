//! Bytes off the stream → the projector's decision. Whatever arrives (one
//! envelope, or a batch of them), the fold answers (never panics), and an
//! event it applies is a duplicate the second time: redelivery can never
//! apply money twice.
#![no_main]

use bank_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use projector::fold::{Decision, account_of, decide};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut envelopes: Vec<pb::EventEnvelope> = pb::EventEnvelope::decode(data).into_iter().collect();
    if let Ok(batch) = pb::EventBatch::decode(data) {
        envelopes.extend(batch.events.iter().filter_map(|e| pb::EventEnvelope::decode(e.as_slice()).ok()));
    }
    for env in envelopes {
        let _ = account_of(&env);
        if let Decision::Apply { view, .. } = decide(&env, None) {
            assert_eq!(view.version, env.version);
            assert_eq!(decide(&env, Some(&view)), Decision::Duplicate);
            // The next event on top of what was just applied, whatever it says, is decided too.
            let mut next = env.clone();
            next.version += 1;
            let _ = decide(&next, Some(&view));
        }
    }
});
