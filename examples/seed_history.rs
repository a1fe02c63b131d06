//! Makes a long channel history in the fake Discord server quickly, and counts what a
//! history holds: the `history` benchmark's helper (scripts/bench-history-rows.sh).
//!
//! ```text
//! cargo run --release --example seed_history -- seed CHANNEL --key FILE [--files N]
//!     [--overwrites N] [--deletes N] [--chat N] [--folders N] [--pack-share F]
//!     [--pack N] [--jobs N] [--tail N] [--span SECS] [--tree DIR]
//! cargo run --release --example seed_history -- count CHANNEL --key FILE
//! ```
//!
//! Both take the server from `DCLOUD_API`, `DCLOUD_TOKEN` and `DCLOUD_GUILD` (the
//! lines `fake-discord` prints). They go through the library as `dcloud-fs` does (a
//! `DiscordStore` with the API pointed at the server, a `Volume` of the channel) but
//! without its client-side pace of 45 requests a second, so the server's knobs should
//! have its rate limits off and no latency while they run.
//!
//! **seed** posts, in one shuffled order, `--files` + `--deletes` new files (tiny
//! contents, in `--folders` folders; a share `--pack-share` of them packed `--pack` to a
//! message, the way the mount's write-back and `put -r` store small files, the others
//! one to a message), `--overwrites` new versions of live files (one a message),
//! `--deletes` deletes of live files (a tombstone a message), and `--chat` messages by
//! someone else (through the server's `/_fake/foreign-message`), so that `--files`
//! files stay live. Nothing is freed as it goes: the history keeps every version and
//! tombstone, which is what `gc` collects. `--jobs` machines share the work, each a
//! store and a volume of its own that changes only the files it created, so one file's changes stay in order.
//! One more machine posts a checkpoint whenever 1,000 records (of all of them) are
//! newer than its last, as a mount does, and one after all but the last `--tail` steps,
//! which follow it: the tail a fresh machine replays after the newest checkpoint (on
//! average half the interval, 500 records, in a channel that checkpoints). With
//! `--span SECS`, the messages are dated as if the history had taken that long: the
//! server's `backdate` knob (read at the start) is lowered by as much as the steps go
//! (every 100 steps), so that a history made in minutes doesn't crowd thousands of
//! messages into the few seconds a reader with a cache reads again. With
//! `--tree DIR`, the live files are also written under DIR, same paths and contents,
//! for a baseline on the local disk. Prints one JSON object: what was posted, and how
//! long it took.
//!
//! **count** reads the channel's whole history (no cache, no checkpoint: a full replay)
//! and prints one JSON object: messages (ours, others'), live files, the tombstone
//! messages (records that only carry deletes) and the deletes they hold, those older
//! than the newest checkpoint, the checkpoint messages, and the newest checkpoint's
//! size (its attachments) and the messages after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dcloud_fs::crypto::{self, Key};
use dcloud_fs::format::CheckpointHead;
use dcloud_fs::store::discord::{DiscordConfig, DiscordStore, Token};
use dcloud_fs::store::{HistoryCursor, MAX_HISTORY_PAGE, Store};
use dcloud_fs::volume::{PutOptions, SmallFile, Volume, VolumeConfig, find_channel};

/// A small deterministic generator (SplitMix64), so that every run makes the same
/// history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One step of the history.
#[derive(Debug, Clone)]
enum Step {
    /// New files, in one message.
    Create(Vec<usize>),
    /// A new version of a file (its `version`).
    Overwrite(usize, u32),
    /// A delete of a file.
    Delete(usize),
    /// A message by someone else.
    Chat(usize),
}

struct SeedArgs {
    channel: String,
    key: PathBuf,
    files: usize,
    overwrites: usize,
    deletes: usize,
    chat: usize,
    folders: usize,
    pack_share: f64,
    pack: usize,
    jobs: usize,
    tail: usize,
    span: f64,
    tree: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: seed_history seed CHANNEL --key FILE [--files N] [--overwrites N] \
         [--deletes N] [--chat N] [--folders N] [--pack-share F] [--pack N] [--jobs N] \
         [--tail N] [--span SECS] [--tree DIR]\n       seed_history count CHANNEL --key FILE"
    );
    std::process::exit(2)
}

fn parse_args(args: &[String]) -> SeedArgs {
    let mut parsed = SeedArgs {
        channel: String::new(),
        key: PathBuf::new(),
        files: 100_000,
        overwrites: 50_000,
        deletes: 25_000,
        chat: 25_000,
        folders: 100,
        pack_share: 0.2,
        pack: 10,
        jobs: 4,
        tail: 0,
        span: 0.0,
        tree: None,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().cloned().unwrap_or_else(|| usage());
        let number = |text: String| text.parse::<usize>().unwrap_or_else(|_| usage());
        match arg.as_str() {
            "--key" => parsed.key = PathBuf::from(value()),
            "--files" => parsed.files = number(value()),
            "--overwrites" => parsed.overwrites = number(value()),
            "--deletes" => parsed.deletes = number(value()),
            "--chat" => parsed.chat = number(value()),
            "--folders" => parsed.folders = number(value()).max(1),
            "--pack-share" => parsed.pack_share = value().parse().unwrap_or_else(|_| usage()),
            "--pack" => parsed.pack = number(value()).max(1),
            "--jobs" => parsed.jobs = number(value()).max(1),
            "--tail" => parsed.tail = number(value()),
            "--span" => parsed.span = value().parse().unwrap_or_else(|_| usage()),
            "--tree" => parsed.tree = Some(PathBuf::from(value())),
            name if !name.starts_with('-') && parsed.channel.is_empty() => {
                parsed.channel = name.to_string()
            }
            _ => usage(),
        }
    }
    if parsed.channel.is_empty() || parsed.key.as_os_str().is_empty() {
        usage();
    }
    parsed
}

/// The history's steps in order, and which files are live at the end. Files are
/// numbered in the order they are created; new files come in groups (a pack, or one),
/// and changes pick a random live file.
fn plan(args: &SeedArgs, rng: &mut Rng) -> (Vec<Step>, Vec<bool>) {
    let created = args.files + args.deletes;
    // The groups new files are created in: a share of the files in packs, the others
    // one a message, the packs spread at random among them.
    let mut packs_left = (created as f64 * args.pack_share) as usize / args.pack.max(2);
    if args.pack < 2 {
        packs_left = 0;
    }
    let mut singles_left = created - packs_left * args.pack;
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut next = 0;
    while packs_left + singles_left > 0 {
        let size = if rng.below(packs_left + singles_left) < packs_left {
            packs_left -= 1;
            args.pack
        } else {
            singles_left -= 1;
            1
        };
        groups.push((next..next + size).collect());
        next += size;
    }
    let mut groups = groups.into_iter();
    let (mut creates_left, mut overwrites_left, mut deletes_left, mut chat_left) =
        (groups.len(), args.overwrites, args.deletes, args.chat);
    let mut live: Vec<usize> = Vec::new();
    let mut alive = vec![false; created];
    let mut versions = vec![0u32; created];
    let mut steps = Vec::new();
    loop {
        let total = creates_left + overwrites_left + deletes_left + chat_left;
        if total == 0 {
            break;
        }
        let pick = rng.below(total);
        // A change needs a live file: only creates (and chat) while there are few.
        let few = live.len() < 10 && creates_left > 0;
        if pick < creates_left || (few && pick < total - chat_left) {
            let group = groups.next().expect("a group is left");
            for &file in &group {
                live.push(file);
                alive[file] = true;
            }
            steps.push(Step::Create(group));
            creates_left -= 1;
        } else if pick < creates_left + overwrites_left {
            let file = live[rng.below(live.len())];
            versions[file] += 1;
            steps.push(Step::Overwrite(file, versions[file]));
            overwrites_left -= 1;
        } else if pick < total - chat_left {
            let file = live.swap_remove(rng.below(live.len()));
            alive[file] = false;
            steps.push(Step::Delete(file));
            deletes_left -= 1;
        } else {
            steps.push(Step::Chat(args.chat - chat_left));
            chat_left -= 1;
        }
    }
    (steps, alive)
}

fn path_of(file: usize, folders: usize) -> String {
    format!("d{:03}/f{file:06}.txt", file % folders)
}

fn contents(file: usize, version: u32) -> Vec<u8> {
    format!("file {file} version {version}\n").into_bytes()
}

fn options() -> PutOptions {
    PutOptions {
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        encrypted: true,
        owner: None,
        atime_ns: None,
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("seed_history: set {name} (the lines fake-discord prints)");
        std::process::exit(2)
    })
}

/// The store, pointed at the fake server, without the client's own pace.
fn open_store() -> Arc<DiscordStore> {
    let guild = env("DCLOUD_GUILD").parse().unwrap_or_else(|_| usage());
    let mut config = DiscordConfig::new(Token::new(&env("DCLOUD_TOKEN")), guild);
    config.api = Some(env("DCLOUD_API"));
    config.global_rate = 1_000_000;
    config.request_timeout = Duration::from_secs(120);
    Arc::new(DiscordStore::new(config).expect("the store opens"))
}

/// The fake server's `backdate` knob, in seconds.
async fn backdate_knob() -> Result<f64, Failure> {
    let knobs: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{}/_fake/knobs", env("DCLOUD_API")))
            .await?
            .error_for_status()?
            .text()
            .await?,
    )?;
    Ok(knobs["backdate"].as_f64().unwrap_or(0.0))
}

fn load_key(path: &Path) -> Key {
    crypto::load_key_file(path).unwrap_or_else(|e| {
        eprintln!("seed_history: {}: {e}", path.display());
        std::process::exit(1)
    })
}

fn volume_config(from_checkpoint: bool) -> VolumeConfig {
    VolumeConfig {
        cache_dir: None,
        // Nothing is freed while seeding: the history keeps every version.
        free_grace: Duration::from_secs(365 * 24 * 3600),
        start_from_checkpoint: from_checkpoint,
        ..VolumeConfig::default()
    }
}

/// Records of ours between two checkpoints, as [`VolumeConfig::checkpoint_every`] says.
const CHECKPOINT_EVERY: usize = 1_000;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Counts of the steps done, shared by the jobs, and how messages are dated.
struct Done {
    steps: AtomicUsize,
    records: AtomicUsize,
    /// The server's `backdate` knob at the start, in seconds, and how much of it the
    /// history spans (see `--span`).
    backdate: f64,
    span: f64,
}

/// Runs one job's steps in order on its volume.
async fn run_job(
    volume: Arc<Volume>,
    steps: Vec<Step>,
    folders: usize,
    channel: u64,
    done: Arc<Done>,
    total: usize,
) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let api = env("DCLOUD_API");
    let started = Instant::now();
    for step in steps {
        let record = !matches!(step, Step::Chat(_));
        match step {
            Step::Create(files) => {
                let files = files
                    .into_iter()
                    .map(|file| SmallFile {
                        path: path_of(file, folders),
                        data: contents(file, 0),
                        options: options(),
                    })
                    .collect();
                volume.put_small(files).await?;
            }
            Step::Overwrite(file, version) => {
                let file = SmallFile {
                    path: path_of(file, folders),
                    data: contents(file, version),
                    options: options(),
                };
                volume.put_small(vec![file]).await?;
            }
            Step::Delete(file) => volume.remove(&path_of(file, folders), false).await?,
            Step::Chat(n) => {
                let body = serde_json::json!({
                    "channel": channel,
                    "author": 4242u64,
                    "content": format!("chat message {n}: lunch at noon?"),
                });
                let answer = http
                    .post(format!("{api}/_fake/foreign-message"))
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await?;
                if !answer.status().is_success() {
                    return Err(format!("foreign message: {}", answer.status()).into());
                }
            }
        }
        if record {
            done.records.fetch_add(1, Ordering::Relaxed);
        }
        let finished = done.steps.fetch_add(1, Ordering::Relaxed) + 1;
        if done.span > 0.0 && finished % 100 == 0 {
            // Messages dated as if the history had taken `span` seconds.
            let backdate = done.backdate - done.span * finished as f64 / total as f64;
            let knob = serde_json::json!({"backdate": backdate.max(0.0)});
            http.post(format!("{api}/_fake/knobs"))
                .header("Content-Type", "application/json")
                .body(knob.to_string())
                .send()
                .await?
                .error_for_status()?;
        }
        if finished % 20_000 == 0 {
            eprintln!(
                "seed_history: {finished} of {total} steps ({:.0} s into this phase)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Runs the jobs' queues at once; the checkpoint volume meanwhile posts a checkpoint
/// whenever 1,000 records of all jobs are newer than its last one (reading the channel
/// up to date first, as every checkpoint does). Returns the checkpoints posted.
async fn run_phase(
    volumes: &[Arc<Volume>],
    queues: Vec<Vec<Step>>,
    checkpointer: Option<Arc<Volume>>,
    args: &SeedArgs,
    channel: u64,
    total: usize,
    done: &Arc<Done>,
) -> Result<usize, Failure> {
    let steps = done.steps.load(Ordering::Relaxed) + queues.iter().map(Vec::len).sum::<usize>();
    let mut tasks = Vec::new();
    for (queue, volume) in queues.into_iter().zip(volumes) {
        tasks.push(tokio::spawn(run_job(
            volume.clone(),
            queue,
            args.folders,
            channel,
            done.clone(),
            total,
        )));
    }
    let checkpoints = checkpointer.map(|volume| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut posted = 0usize;
            let mut next = CHECKPOINT_EVERY;
            while done.steps.load(Ordering::Relaxed) < steps {
                let records = done.records.load(Ordering::Relaxed);
                if records >= next {
                    volume.post_checkpoint().await?;
                    posted += 1;
                    next = records + CHECKPOINT_EVERY;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok::<usize, dcloud_fs::volume::VolumeError>(posted)
        })
    });
    for task in tasks {
        task.await??;
    }
    Ok(match checkpoints {
        Some(task) => task.await??,
        None => 0,
    })
}

async fn seed(args: SeedArgs) -> Result<(), Failure> {
    let mut rng = Rng(0x5eed_0014);
    let (steps, alive) = plan(&args, &mut rng);
    let key = load_key(&args.key);
    // One store and volume per job, as on as many machines, and one more that posts
    // the checkpoints.
    let mut volumes = Vec::new();
    let mut channel_id = 0;
    for _ in 0..=args.jobs {
        let store = open_store();
        let channel = find_channel(store.as_ref(), &args.channel).await?;
        channel_id = channel.id;
        let config = volume_config(true);
        let volume = Volume::open(store, channel, Some(key.clone()), config).await?;
        volumes.push(Arc::new(volume));
    }
    let checkpointer = volumes.pop().expect("a volume");
    // Each job owns the files of the groups dealt to it: one file's steps stay in order,
    // and each volume changes only files it made. The last `tail` steps come after the
    // last checkpoint.
    let boundary = steps.len().saturating_sub(args.tail);
    let mut owner: HashMap<usize, usize> = HashMap::new();
    let mut queues: [Vec<Vec<Step>>; 2] =
        [vec![Vec::new(); args.jobs], vec![Vec::new(); args.jobs]];
    let mut created_groups = 0usize;
    for (n, step) in steps.iter().enumerate() {
        let job = match step {
            Step::Create(files) => {
                let job = created_groups % args.jobs;
                created_groups += 1;
                for &file in files {
                    owner.insert(file, job);
                }
                job
            }
            Step::Overwrite(file, _) | Step::Delete(file) => owner[file],
            Step::Chat(_) => n % args.jobs,
        };
        queues[usize::from(n >= boundary)][job].push(step.clone());
    }
    let counts = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let packs = counts(|s| matches!(s, Step::Create(f) if f.len() > 1));
    let singles = counts(|s| matches!(s, Step::Create(f) if f.len() == 1));
    let started = Instant::now();
    let total = steps.len();
    let [before, after] = queues;
    let done = Arc::new(Done {
        steps: AtomicUsize::new(0),
        records: AtomicUsize::new(0),
        backdate: backdate_knob().await?,
        span: args.span,
    });
    let checkpointing = Some(checkpointer.clone());
    let mut posted = run_phase(
        &volumes,
        before,
        checkpointing,
        &args,
        channel_id,
        total,
        &done,
    )
    .await?;
    checkpointer.post_checkpoint().await?;
    posted += 1;
    run_phase(&volumes, after, None, &args, channel_id, total, &done).await?;
    let seconds = started.elapsed().as_secs_f64();
    checkpointer.refresh().await?;
    let newest_checkpoint = checkpointer
        .index()
        .checkpoint_messages()
        .last()
        .copied()
        .unwrap_or(0);
    let records_after = checkpointer
        .index()
        .records_after(newest_checkpoint, usize::MAX);
    if let Some(tree) = &args.tree {
        let mut versions = vec![0u32; alive.len()];
        for step in &steps {
            if let Step::Overwrite(file, version) = step {
                versions[*file] = *version;
            }
        }
        for (file, _) in alive.iter().enumerate().filter(|(_, live)| **live) {
            let path = tree.join(path_of(file, args.folders));
            std::fs::create_dir_all(path.parent().expect("a folder"))?;
            std::fs::write(&path, contents(file, versions[file]))?;
        }
    }
    let (files, bytes) = checkpointer.index().totals();
    let summary = serde_json::json!({
        "steps": total,
        "messages_ours": singles + packs + args.overwrites + args.deletes,
        "single_file_messages": singles,
        "pack_messages": packs,
        "overwrites": args.overwrites,
        "deletes": args.deletes,
        "chat": args.chat,
        "checkpoints_posted": posted,
        "live_files": files,
        "live_bytes": bytes,
        "records_after_newest_checkpoint": records_after,
        "seconds": seconds,
    });
    println!("{summary}");
    Ok(())
}

async fn count(args: SeedArgs) -> Result<(), Failure> {
    let store = open_store();
    let channel = find_channel(store.as_ref(), &args.channel).await?;
    let channel_id = channel.id;
    let me = store.current_user().await?;
    // The newest checkpoint of ours among the pins, and its size.
    let mut heads: Vec<_> = store
        .pins(channel_id)
        .await?
        .into_iter()
        .filter(|m| m.author_id == me)
        .filter_map(|m| CheckpointHead::parse(&m.content).map(|head| (m, head)))
        .collect();
    heads.sort_by_key(|(m, _)| m.id);
    let (mut head_id, mut checkpoint_bytes, mut checkpoint_message_count) = (0, 0u64, 0usize);
    if let Some((head, parsed)) = heads.last() {
        head_id = head.id;
        checkpoint_message_count = 1 + parsed.parts.len();
        checkpoint_bytes = head.attachments.iter().map(|a| a.size).sum();
        for &part in &parsed.parts {
            let message = store.message(channel_id, part).await?;
            checkpoint_bytes += message.attachments.iter().map(|a| a.size).sum::<u64>();
        }
    }
    let (mut ours, mut others, mut after_head) = (0u64, 0u64, 0u64);
    let mut cursor = HistoryCursor::Latest;
    loop {
        let page = store.history(channel_id, cursor, MAX_HISTORY_PAGE).await?;
        let Some(oldest) = page.last().map(|m| m.id) else {
            break;
        };
        for message in &page {
            if message.id > head_id {
                after_head += 1;
            }
            if message.author_id == me {
                ours += 1;
            } else {
                others += 1;
            }
        }
        if page.len() < MAX_HISTORY_PAGE {
            break;
        }
        cursor = HistoryCursor::Before(oldest);
    }
    // A full replay: what the history says, whatever a checkpoint says.
    let volume = Volume::open_to_inspect(
        store.clone(),
        channel,
        Some(load_key(&args.key)),
        volume_config(false),
    )
    .await?;
    let index = volume.index();
    let checkpoints = index.checkpoint_messages();
    let newest_checkpoint = checkpoints.last().copied().unwrap_or(0);
    let deletes = index.deletes_by_message();
    let tombstones: Vec<_> = index
        .messages_in_use()
        .into_iter()
        .filter(|&m| !index.used_by_entries(m))
        .collect();
    let older = tombstones
        .iter()
        .filter(|&&m| m < newest_checkpoint)
        .count();
    let held: usize = deletes.values().map(Vec::len).sum();
    let held_older: usize = deletes
        .iter()
        .filter(|(m, _)| **m < newest_checkpoint)
        .map(|(_, paths)| paths.len())
        .sum();
    let (files, bytes) = index.totals();
    let summary = serde_json::json!({
        "messages": ours + others,
        "messages_ours": ours,
        "messages_others": others,
        "live_files": files,
        "live_bytes": bytes,
        "tombstone_messages": tombstones.len(),
        "tombstone_messages_older_than_newest_checkpoint": older,
        "deletes_held": held,
        "deletes_held_older_than_newest_checkpoint": held_older,
        "checkpoint_messages": checkpoints.len(),
        "checkpoint_bytes": checkpoint_bytes,
        "checkpoint_message_count": checkpoint_message_count,
        "messages_after_newest_checkpoint": after_head,
    });
    println!("{summary}");
    Ok(())
}

#[tokio::main]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        usage()
    };
    let result = match command.as_str() {
        "seed" => seed(parse_args(rest)).await,
        "count" => count(parse_args(rest)).await,
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("seed_history: {e}");
        std::process::exit(1);
    }
}
