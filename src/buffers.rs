//! A small pool of large byte buffers, shared by the layers that move chunks: sealing
//! ([`crate::format`]) and fetching ([`crate::store`]).
//!
//! A chunk is up to 8 MiB on Discord's defaults. A fresh buffer of that size costs more
//! than it looks: the allocator maps new pages, and each of them faults in (and is
//! zeroed by the kernel) on first touch, about a quarter of the time AES-GCM takes over
//! the same bytes. So buffers of at least [`POOLED_MIN`] bytes go back to a pool when
//! done with, up to [`IDLE_BYTES`] of them (what an idle process holds at most), and
//! the next chunk (or run of segments being read) takes one from there, already
//! faulted in: the one given back last, which is the likeliest to still be in the
//! processor's cache (taking the oldest instead cycles through every idle buffer, and
//! each chunk then writes into memory evicted long ago). A buffer taken from the pool
//! holds stale bytes: whoever takes it overwrites what it
//! uses, which every caller here does (a read into it, or sealing in place). New large
//! buffers ask for transparent huge pages, which fault in and pin (for direct reads and
//! FUSE replies) far cheaper than 4 KiB pages. A read through the mount replies from
//! one of these buffers too, given back once the reply is sent.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers at least this large go back to the pool when done with.
pub const POOLED_MIN: usize = 1 << 20;
/// Bytes of idle buffers the pool keeps, at most.
pub const IDLE_BYTES: usize = 48 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of `len` initialized bytes whose contents are unspecified: from the pool if
/// it is large (then nothing is zeroed or faulted in again), else new (zeroed lazily by
/// the allocator, so only what is touched costs).
pub fn take(len: usize) -> Vec<u8> {
    if len >= POOLED_MIN {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The most recently given back first: its bytes are the likeliest to be still
        // in the processor's cache (and its pages in the TLB).
        if let Some(at) = pool.iter().rposition(|b| b.capacity() >= len) {
            let mut buffer = pool.remove(at);
            drop(pool);
            if buffer.len() >= len {
                buffer.truncate(len);
            } else {
                buffer.resize(len, 0);
            }
            return buffer;
        }
        drop(pool);
        let mut buffer = vec![0; len];
        ask_for_huge_pages(&mut buffer);
        return buffer;
    }
    vec![0; len]
}

/// Asks the kernel to back a new large buffer with transparent huge pages (where it
/// does so only when asked, the usual setting), before anything touches it: a 2 MiB
/// page faults in once instead of 512 times, and pinning the buffer for a direct read
/// or a FUSE reply walks one page table entry per 2 MiB instead of per 4 KiB. Only an
/// advice: without it the buffer works the same.
fn ask_for_huge_pages(buffer: &mut [u8]) {
    const PAGE: usize = 4096;
    let start = buffer.as_mut_ptr();
    let skip = start.align_offset(PAGE);
    let len = buffer.len().saturating_sub(skip) / PAGE * PAGE;
    if len == 0 {
        return;
    }
    // SAFETY: an advice on whole pages inside memory this buffer owns; it changes how
    // the pages are backed, never their contents.
    unsafe {
        libc::madvise(start.add(skip).cast(), len, libc::MADV_HUGEPAGE);
    }
}

/// Returns a large buffer to the pool, contents and length kept.
pub fn give_back(buffer: Vec<u8>) {
    if buffer.capacity() < POOLED_MIN {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let idle: usize = pool.iter().map(Vec::capacity).sum();
    if idle + buffer.capacity() <= IDLE_BYTES {
        pool.push(buffer);
    }
}

/// The first `len` bytes of `buffer` as `Bytes` that give the buffer back to the pool
/// when the last view of them is dropped (a small buffer is just freed).
pub fn into_bytes(mut buffer: Vec<u8>, len: usize) -> Bytes {
    if buffer.capacity() >= POOLED_MIN {
        Bytes::from_owner(Pooled { buffer, len })
    } else {
        buffer.truncate(len);
        Bytes::from(buffer)
    }
}

struct Pooled {
    buffer: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_come_back_and_small_ones_are_just_freed() {
        let big = take(2 * POOLED_MIN);
        assert_eq!(big.len(), 2 * POOLED_MIN);
        let at = big.as_ptr();
        let bytes = into_bytes(big, 10);
        assert_eq!(bytes.len(), 10);
        let view = bytes.slice(2..5);
        drop(bytes);
        assert_eq!(view.len(), 3, "a view keeps the buffer alive");
        drop(view);
        // The pool is shared by the tests running at once: look for ours.
        let most = IDLE_BYTES / (2 * POOLED_MIN);
        let again: Vec<Vec<u8>> = (0..most).map(|_| take(2 * POOLED_MIN)).collect();
        assert!(
            again.iter().any(|b| b.as_ptr() == at),
            "the buffer came back"
        );
        again.into_iter().for_each(give_back);
        assert_eq!(take(100).len(), 100);
    }
}
