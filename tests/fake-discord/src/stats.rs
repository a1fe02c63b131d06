//! Counters of what the server saw and did, for tests' assertions and benchmark reports
//! (`FakeDiscord::stats`, `GET /_fake/stats`).

use serde::Serialize;
use std::collections::BTreeMap;

/// What the server has seen and done since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// API requests (under `/api/v10`), answered or not.
    pub requests: u64,
    /// CDN requests (under `/attachments`).
    pub cdn_requests: u64,
    /// Of `cdn_requests`, those with a `Range` header (counted also when `ignore_range`
    /// makes the CDN answer them whole).
    pub range_requests: u64,
    /// API requests refused with 401.
    pub unauthorized: u64,
    /// 429s because the client overran a bucket or the global limit.
    pub rate_limited: u64,
    /// Of `rate_limited`, those for the global limit.
    pub global_rate_limited: u64,
    /// 429s sent on purpose (`forced_429_rate`).
    pub forced_429: u64,
    /// Requests failed on purpose (`failure_rate`): 5xx answers and dropped connections.
    pub injected_failures: u64,
    /// 413 answers.
    pub too_large: u64,
    /// Bytes of request bodies received by the API.
    pub bytes_received: u64,
    /// Bytes of attachments stored.
    pub bytes_uploaded: u64,
    /// Bytes of attachments served by the CDN (counted when the answer starts).
    pub bytes_downloaded: u64,
    /// Messages created through the API (not counting `enforce_nonce` repeats).
    pub messages_created: u64,
    /// Messages deleted (singly or in bulk).
    pub messages_deleted: u64,
    /// Attachments stored.
    pub attachments_created: u64,
    /// Channels created through the API.
    pub channels_created: u64,
    /// API requests per route template (`POST /channels/{channel.id}/messages`, ...).
    pub per_route: BTreeMap<String, u64>,
    /// API answers per HTTP status.
    pub per_status: BTreeMap<u16, u64>,
    /// The most API requests of one route template (over all channels) that were in
    /// the server at once, from their arrival (before the `latency` knob's delay) to
    /// their answer: above 1 when a client sends a route's requests in parallel.
    pub most_in_flight: BTreeMap<String, u64>,
}
