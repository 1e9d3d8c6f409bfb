//! Delivers even counts only; Kafka records pass unchanged unless the
//! connection authenticated with a context, in which case their payload is
//! replaced by that context (to show what a plugin can see).

use kiwi_sdk::hook;
use kiwi_sdk::types::intercept::{Action, Context, CounterEventCtx, EventCtx, TransformedPayload};

#[hook::intercept]
fn intercept(ctx: Context) -> Action {
    match ctx.event {
        EventCtx::Counter(CounterEventCtx { count, .. }) if count % 2 == 1 => Action::Discard,
        EventCtx::Kafka(_) => match ctx.auth {
            Some(auth) => Action::Transform(TransformedPayload::Kafka(Some(auth.raw))),
            None => Action::Forward,
        },
        _ => Action::Forward,
    }
}
