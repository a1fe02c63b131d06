//! Counting the 429s that twilight-http waits out by itself, for the pace
//! `dcloud-fs status` shows ([`crate::store::pace`]).
//!
//! When Discord answers 429, twilight-http 0.18 asks its rate limiter for a new permit
//! and sends the request again, inside the same response future: the caller
//! ([`super::rest`]) never sees the 429, only a slower answer. The one trace it leaves
//! is a `tracing` event ("rate limited; retrying", at info level, from
//! `twilight_http::response::future`). So the store installs, once per process, a
//! minimal `tracing` subscriber that is interested in that event only and counts it
//! ([`crate::store::pace::note_429`]); every other callsite (hyper's, h2's, the rest of
//! twilight's) is marked uninterested on first use and costs nothing after. Logging
//! goes through the `log` crate as before; this subscriber writes nothing.
//!
//! If some other subscriber was installed first (a program embedding the library),
//! this one isn't, and the 429s of the Discord API go uncounted; those of the CDN
//! downloads are counted either way.

use std::fmt;
use std::sync::Once;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, span};

/// Where twilight-http's 429 event comes from.
const TARGET: &str = "twilight_http::response::future";
/// What it says.
const MESSAGE: &str = "rate limited; retrying";

/// Installs the counter as the process's `tracing` subscriber (once; see the module
/// docs).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if tracing::subscriber::set_global_default(Count429s).is_err() {
            log::debug!("a tracing subscriber is set already: the API's 429s go uncounted");
        }
    });
}

/// The subscriber: interested in twilight's 429 event only.
struct Count429s;

fn is_the_429_event(metadata: &Metadata<'_>) -> bool {
    metadata.is_event() && *metadata.level() == Level::INFO && metadata.target() == TARGET
}

/// Whether an event's message is the 429's.
#[derive(Default)]
struct IsRetry(bool);

impl Visit for IsRetry {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value == MESSAGE;
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}") == MESSAGE;
        }
    }
}

impl tracing::Subscriber for Count429s {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_the_429_event(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        is_the_429_event(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        // Never called: no span is enabled. An id must not be zero.
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut retry = IsRetry::default();
        event.record(&mut retry);
        if retry.0 {
            crate::store::pace::note_429();
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}
