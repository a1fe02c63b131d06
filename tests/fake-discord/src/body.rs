//! Bodies with a speed limit: reading a request body no faster than the bandwidth knob
//! allows, and a response body that trickles out at that speed and may break off midway
//! (failure injection on downloads).

use crate::error::ConnectionError;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Largest piece sent at once by a throttled body.
const CHUNK: usize = 64 * 1024;

/// A request body read into memory, unless it was larger than the reader's cap.
pub struct ReadBody {
    /// The bytes, or `None` if there were more than the cap (they were read and dropped).
    pub data: Option<Bytes>,
    /// How many bytes the client sent.
    pub len: u64,
}

/// Reads a whole request body, pausing as needed to stay under `bandwidth` bytes/s.
/// Bytes beyond `cap` are read and dropped, so the client still gets to read the answer.
pub async fn read_body(
    mut body: Incoming,
    cap: u64,
    bandwidth: Option<u64>,
) -> Result<ReadBody, ConnectionError> {
    let started = Instant::now();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len <= cap {
            chunks.push(data);
        } else {
            chunks.clear();
        }
        if let Some(rate) = bandwidth {
            tokio::time::sleep_until((started + transfer_time(len, rate)).into()).await;
        }
    }
    let data = (len <= cap).then(|| concat(chunks));
    Ok(ReadBody { data, len })
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => chunks.concat().into(),
    }
}

/// How long `bytes` take at `rate` bytes/s.
fn transfer_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

/// A response body: all at once, or in pieces at a given speed, possibly breaking off.
pub struct ResponseBody {
    data: Bytes,
    sent: usize,
    bandwidth: Option<u64>,
    break_at: Option<usize>,
    started: Option<Instant>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl ResponseBody {
    /// A body sent as fast as the client reads it.
    pub fn full(data: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            data: data.into(),
            sent: 0,
            bandwidth: None,
            break_at: None,
            started: None,
            pause: None,
        }
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    /// Sends no faster than `rate` bytes/s.
    pub fn throttled(mut self, rate: Option<u64>) -> ResponseBody {
        self.bandwidth = rate;
        self
    }

    /// Fails after sending `at` bytes (the connection breaks mid-body).
    pub fn breaking_at(mut self, at: usize) -> ResponseBody {
        self.break_at = Some(at);
        self
    }

    fn next_chunk_len(&self) -> usize {
        let left = self.data.len() - self.sent;
        let until_break = self
            .break_at
            .map_or(usize::MAX, |at| at - self.sent.min(at));
        left.min(CHUNK).min(until_break)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ConnectionError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ConnectionError>>> {
        let this = &mut *self;
        if let Some(pause) = &mut this.pause {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        if this.break_at.is_some_and(|at| this.sent >= at) && this.sent < this.data.len() {
            return Poll::Ready(Some(Err(ConnectionError::Injected)));
        }
        if this.sent >= this.data.len() {
            return Poll::Ready(None);
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        let len = this.next_chunk_len();
        if let Some(rate) = this.bandwidth {
            // A chunk leaves when the time its last byte is due has come.
            let due = started + transfer_time((this.sent + len) as u64, rate);
            if due > Instant::now() {
                let mut pause = Box::pin(tokio::time::sleep_until(due.into()));
                if pause.as_mut().poll(cx).is_pending() {
                    this.pause = Some(pause);
                    return Poll::Pending;
                }
            }
        }
        let chunk = this.data.slice(this.sent..this.sent + len);
        this.sent += len;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}
