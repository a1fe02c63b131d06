//! Micro-benchmark of sealing and opening chunks, against the raw cipher underneath.
//!
//! ```text
//! cargo run --release --example crypto_bench -- quick|full
//! ```
//!
//! Every byte dcloud-fs moves is sealed into 8 MiB chunks on the way up and opened on
//! the way down, so on a fast link the CPU cost of a chunk bounds a transfer. This
//! measures, on one thread (MB/s per core, 10^6 bytes, the median of several
//! repetitions):
//!
//! - seal: the real code path of an upload, [`ChunkBuffer::fill_from`] reading 8 MiB of
//!   plaintext into a new buffer (allocation and copy included), then
//!   [`ChunkBuffer::seal`] with a key (header, random nonce, AES-256-GCM in place, tag);
//! - open: [`open_chunk`] of such a chunk (header checks, AES-256-GCM decryption in
//!   place, tag check, the plaintext as a view), timed without the copy that stands in
//!   for the download;
//! - the baseline, raw AES-256-GCM of the same 8 MiB with the `aes-gcm` crate the
//!   library uses (`encrypt_inout_detached` / `decrypt_inout_detached`), in a buffer
//!   reused from one call to the next: what the cipher alone costs; for sealing also
//!   beside the cipher after a copy of the plaintext into that buffer, which is what
//!   the upload's read from its source costs on top of the cipher;
//! - plaintext mode (`--plain`), where a chunk is checked by SHA-256 instead: seal and
//!   open against raw SHA-256 of the same bytes with the `sha2` crate.
//!
//! The ratios say how much of the cipher's speed the chunk format keeps: what is lost
//! is copying, allocating and faulting in buffers. With `BENCH_ROWS` set, it appends
//! rows in the format of `scripts/bench-lib.sh` (section `micro`) to that file.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use dcloud_fs::crypto::Key;
use dcloud_fs::format::{ChunkBuffer, ChunkLocation, ChunkRef, FileId, Sealing, open_chunk};
use sha2::{Digest, Sha256};

/// Plaintext bytes per chunk, as dcloud-fs cuts files for Discord.
const CHUNK: usize = 8 * 1024 * 1024;

/// How long a run is: repetitions (the median is reported) of `chunks` chunks per job.
struct Size {
    reps: usize,
    chunks: usize,
}

/// What is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    Seal,
    Open,
    RawEncrypt,
    RawCopyEncrypt,
    RawDecrypt,
    SealPlain,
    OpenPlain,
    RawSha256,
}

impl Job {
    /// The job's name in the table and the rows.
    fn name(self) -> &'static str {
        match self {
            Job::Seal => "seal 8 MiB chunk (AES-256-GCM)",
            Job::Open => "open 8 MiB chunk (AES-256-GCM)",
            Job::RawEncrypt => "raw AES-256-GCM encrypt",
            Job::RawCopyEncrypt => "copy in + raw AES-256-GCM encrypt",
            Job::RawDecrypt => "raw AES-256-GCM decrypt",
            Job::SealPlain => "seal 8 MiB chunk, plain (SHA-256)",
            Job::OpenPlain => "open 8 MiB chunk, plain (SHA-256)",
            Job::RawSha256 => "raw SHA-256",
        }
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "quick".into());
    let size = match mode.as_str() {
        "quick" => Size { reps: 5, chunks: 6 },
        "full" => Size {
            reps: 9,
            chunks: 16,
        },
        _ => {
            eprintln!("usage: crypto_bench quick|full");
            std::process::exit(2);
        }
    };
    let started = Instant::now();

    let mut plain = vec![0u8; CHUNK];
    dcloud_fs::crypto::fill_random(&mut plain).expect("random bytes");
    let key_bytes = [7u8; 32];
    let key = Key::from_bytes(key_bytes);
    let file = FileId([3u8; 16]);

    let sealed = seal_chunk(&plain, Sealing::Encrypted(&key), file);
    let sealed_ref = chunk_ref(None, sealed.prefix);
    let plain_sealed = seal_chunk(&plain, Sealing::Plain, file);
    let plain_ref = chunk_ref(plain_sealed.sha256, None);
    let cipher = Aes256Gcm::new(&key_bytes.into());
    let nonce: Nonce<_> = [9u8; 12].into();
    let aad = [1u8; 29]; // as long as a chunk's AAD
    let mut encrypt_buffer = plain.clone();
    let mut copy_buffer = plain.clone();
    // Decrypting needs a valid tag: encrypt once, then decrypt and encrypt again in
    // turn, timing only the decryption.
    let mut decrypt_buffer = plain.clone();
    let mut tag: Tag = cipher
        .encrypt_inout_detached(&nonce, &aad, decrypt_buffer.as_mut_slice().into())
        .expect("encrypts");

    // Each job does one chunk and returns the time of the part it measures.
    let mut jobs: Vec<(Job, Box<dyn FnMut() -> Duration + '_>)> = vec![
        (
            Job::Seal,
            Box::new(|| {
                let start = Instant::now();
                let sealed = seal_chunk(&plain, Sealing::Encrypted(&key), file);
                let elapsed = start.elapsed();
                black_box(sealed);
                elapsed
            }),
        ),
        (
            Job::Open,
            Box::new(|| {
                let data = sealed.as_bytes().to_vec(); // what the download hands over
                let start = Instant::now();
                let opened =
                    open_chunk(Some(&key), file, true, 0, &sealed_ref, data).expect("opens");
                let elapsed = start.elapsed();
                assert_eq!(opened.iter().map(|b| b.len()).sum::<usize>(), CHUNK);
                drop(black_box(opened));
                elapsed
            }),
        ),
        (
            Job::RawEncrypt,
            Box::new(|| {
                let start = Instant::now();
                let tag = cipher
                    .encrypt_inout_detached(&nonce, &aad, encrypt_buffer.as_mut_slice().into())
                    .expect("encrypts");
                let elapsed = start.elapsed();
                black_box(tag);
                elapsed
            }),
        ),
        (
            Job::RawCopyEncrypt,
            Box::new(|| {
                let start = Instant::now();
                copy_buffer.copy_from_slice(&plain);
                let tag = cipher
                    .encrypt_inout_detached(&nonce, &aad, copy_buffer.as_mut_slice().into())
                    .expect("encrypts");
                let elapsed = start.elapsed();
                black_box(tag);
                elapsed
            }),
        ),
        (
            Job::RawDecrypt,
            Box::new(|| {
                let start = Instant::now();
                cipher
                    .decrypt_inout_detached(
                        &nonce,
                        &aad,
                        decrypt_buffer.as_mut_slice().into(),
                        &tag,
                    )
                    .expect("decrypts");
                let elapsed = start.elapsed();
                tag = cipher
                    .encrypt_inout_detached(&nonce, &aad, decrypt_buffer.as_mut_slice().into())
                    .expect("encrypts");
                elapsed
            }),
        ),
        (
            Job::SealPlain,
            Box::new(|| {
                let start = Instant::now();
                let sealed = seal_chunk(&plain, Sealing::Plain, file);
                let elapsed = start.elapsed();
                black_box(sealed);
                elapsed
            }),
        ),
        (
            Job::OpenPlain,
            Box::new(|| {
                let data = plain_sealed.as_bytes().to_vec();
                let start = Instant::now();
                let opened = open_chunk(None, file, false, 0, &plain_ref, data).expect("opens");
                let elapsed = start.elapsed();
                drop(black_box(opened));
                elapsed
            }),
        ),
        (
            Job::RawSha256,
            Box::new(|| {
                let start = Instant::now();
                let digest = Sha256::digest(&plain);
                let elapsed = start.elapsed();
                black_box(digest);
                elapsed
            }),
        ),
    ];

    // Repetitions go round the jobs, so that whatever else the machine does meanwhile
    // slows them all alike.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
    for (_, one) in jobs.iter_mut() {
        one(); // warm-up
    }
    for _ in 0..size.reps {
        for ((_, one), rates) in jobs.iter_mut().zip(rates.iter_mut()) {
            let total: Duration = (0..size.chunks).map(|_| one()).sum();
            rates.push((size.chunks * CHUNK) as f64 / 1e6 / total.as_secs_f64());
        }
    }
    let names: Vec<Job> = jobs.iter().map(|(job, _)| *job).collect();
    drop(jobs);
    let median = |job: Job| {
        let at = names.iter().position(|j| *j == job).expect("a job");
        let mut sorted = rates[at].clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };

    let note = format!(
        "8 MiB chunks; one thread; median of {} x {} chunks",
        size.reps, size.chunks
    );
    let aes = "raw AES-256-GCM (aes-gcm crate)";
    let sha = "raw SHA-256 (sha2 crate)";
    let rows = [
        (Job::Seal, Job::RawEncrypt, format!("{aes}, encrypt")),
        (
            Job::Seal,
            Job::RawCopyEncrypt,
            format!("{aes}, encrypt, after copying the plaintext in (as seal's read does)"),
        ),
        (Job::Open, Job::RawDecrypt, format!("{aes}, decrypt")),
        (Job::SealPlain, Job::RawSha256, sha.to_string()),
        (Job::OpenPlain, Job::RawSha256, sha.to_string()),
    ]
    .map(|(job, baseline, label)| (job.name(), median(job), label, median(baseline)));

    println!("chunk seal/open, one thread, MB/s ({mode}: {note})");
    println!();
    println!("| job | MB/s | baseline | baseline MB/s | ratio |");
    println!("|---|---:|---|---:|---:|");
    for (job, mbps, label, baseline) in &rows {
        println!(
            "| {job} | {mbps:.0} | {label} | {baseline:.0} | {:.2} |",
            mbps / baseline
        );
    }
    if let Some(path) = std::env::var("BENCH_ROWS").ok().filter(|p| !p.is_empty()) {
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("can't open BENCH_ROWS {path}: {e}"));
        for (job, mbps, label, baseline) in &rows {
            writeln!(
                out,
                "micro\t{job}\t{mbps:.0}\tMB/s per core\t{label}\t{baseline:.0}\t{:.2}\t\t{note}",
                mbps / baseline
            )
            .expect("writing BENCH_ROWS");
        }
    }
    println!();
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}

/// Seals `plain` as chunk 0 of `file` the way an upload does: read into a new buffer,
/// then sealed in place.
fn seal_chunk(plain: &[u8], sealing: Sealing<'_>, file: FileId) -> dcloud_fs::format::SealedChunk {
    let mut buffer = ChunkBuffer::new(CHUNK, sealing, file, 0).expect("a buffer");
    let mut reader = plain;
    let read = buffer.fill_from(&mut reader, CHUNK).expect("reads");
    assert_eq!(read, CHUNK);
    buffer.seal().expect("seals")
}

/// How a record would describe the chunk.
fn chunk_ref(sha256: Option<[u8; 32]>, prefix: Option<[u8; 8]>) -> ChunkRef {
    ChunkRef {
        location: ChunkLocation::Attached {
            filename: "c0.bin".into(),
        },
        len: CHUNK as u64,
        sha256,
        tag: None,
        key: None,
        prefix,
        packed_at: None,
    }
}
