//! A channel's records, written and read: the one place that decides how a record is
//! protected, lays it out as a message and posts it, and the one place that decides
//! which records read from the history count.
//!
//! ## Writing
//!
//! Every change goes through [`Volume::post_record`], which
//!
//! 1. stamps the record with the channel's next Lamport `seq` ([`Index::take_seq`]);
//! 2. seals it ([`Volume::record_seal`], the plain/sealed policy): a record that puts
//!    plain files and no encrypted one is *signed* when a key is loaded (anyone can read
//!    it, as they can read the files; the key's holders can tell it is theirs) and left
//!    unsigned without a key; every other record is encrypted when a key is loaded and
//!    unsigned without one (a writer without a key writes plain files only). Either way
//!    it is bound to this channel;
//! 3. lays it out: inline in the content when it fits, else in a `record.dcfr`
//!    attachment; chunks that ride along (a file's last chunks, a batch of small files)
//!    go in the same message when all of it fits the store's limits. When they don't,
//!    the chunks of the one file they belong to go first in a data message of their
//!    own, and the record follows alone, naming them by id (re-sealed, since its chunk
//!    references changed); if that record fails, the data message is deleted;
//! 4. notes the messages it posted as the bot's own ([`Own`]) and applies the record
//!    ([`Volume::apply_own`]); what it replaced is freed after that.
//!
//! Records of one volume are posted one at a time, from taking the `seq` to applying
//! the record, so that this process's records land in the order of their `seq` (two
//! concurrent changes of one file would otherwise let the one that took the lower `seq`
//! land last, and lose). Uploads of data run in parallel all the same: only the record
//! posts wait for each other, and Discord serializes posts to one channel anyway.
//!
//! ## Reading
//!
//! A page of history is read in two steps. First its records are fetched, several at
//! once, and opened ([`Volume::open_records`]); that needs nothing that applying the
//! pages before it changes, so a refresh does it for the next few pages while it
//! applies one. Then ([`Volume::apply_page`]) every message of the bot's own is noted
//! with its kind, so that a record can be checked against the messages it names (they
//! are always older: chunks are posted before the record that names them) whatever
//! order the rest goes in, and the records are applied, version-2 records before
//! version-1 ones, so that a page holding both knows the channel's cutover before it
//! judges a version-1 record.
//!
//! Which records count ([`Volume::accept`]): with a key loaded, a version-2 record only
//! if that key authenticated it (sealed or signed by it), and a version-1 record only if
//! it was posted before the channel's first version-2 record the key authenticated
//! (after that, a version-1 record can only be a copy or a forgery: nothing writes them
//! any more). Without a key, every plain record counts (nothing can be checked). Records
//! that don't count are skipped and remembered ([`Skip`]), so that `ls` and `get` can
//! say why a file is missing. A record that loses to a change posted before it (a copy
//! of an old record posted again, say) is logged once, with a warning naming it.
//!
//! Everything read is bounded: a record attachment larger than the store's per-file
//! limit is refused unread, and its fetch reads no more than the size the message
//! announces. A record whose attachment can't be fetched although its message still
//! exists is kept in [`Index::unread`] and read again at every refresh, never skipped
//! for good.

use bytes::Bytes;

use super::index::{Own, Skip};
use super::journal::LazyJournal;
use super::{Volume, VolumeError, transfer};
use crate::crypto::CryptoError;
use crate::format::{self, FileId, FormatError, MessageKind, Op, OpenedRecord, Record, RecordSeal};
use crate::store::{Id, Message, NewAttachment, NewMessage};

/// Records in attachments that a refresh downloads at once.
const RECORD_FETCHES: usize = 8;

/// Chunks that ride on a record's message.
#[derive(Default)]
pub(super) struct Riders<'a> {
    /// The sealed chunks, named as the record's `f` references name them.
    pub attachments: Vec<NewAttachment>,
    /// The file they all belong to, when there is one: then, if they don't fit beside
    /// the record, they go first in a data message of that file.
    pub file: Option<FileId>,
    /// Data messages posted for this record already (by an upload), with their file.
    pub data_messages: Vec<(Id, FileId)>,
    /// The upload's journal, started before a data message is posted, so that a crash
    /// leaves a note of what to clean up.
    pub journal: Option<&'a LazyJournal>,
}

impl Volume {
    /// How a record of `ops` is protected (see the module docs): the one place that
    /// decides between encrypted, signed and unsigned records.
    pub(super) fn record_seal(&self, ops: &[Op]) -> Result<RecordSeal<'_>, VolumeError> {
        let puts_encrypted = ops.iter().any(|op| op.file().is_some_and(|f| f.encrypted));
        let puts_plain_only = !puts_encrypted && ops.iter().any(|op| op.file().is_some());
        Ok(match (&self.key, puts_plain_only) {
            (Some(key), true) => RecordSeal::Signed(key),
            (Some(key), false) => RecordSeal::Encrypted(key),
            (None, _) if puts_encrypted => return Err(VolumeError::NoKey),
            (None, _) => RecordSeal::Unsigned,
        })
    }

    /// Seals, lays out and posts a record of `ops` with `riders` on its message, notes
    /// what it posted as ours and lets it land. Returns the record's message and the
    /// record as posted (chunk references by id where the riders had to go first).
    pub(super) async fn post_record(
        &self,
        mut ops: Vec<Op>,
        riders: Riders<'_>,
    ) -> Result<(Message, Record), VolumeError> {
        // From taking the seq to applying the record, one record at a time: records of
        // this process land in the order of their seq.
        let posting = self.posting.lock().await;
        stamp_change_time(&mut ops, now_ns());
        let seq = self.index().take_seq();
        let seal = self.record_seal(&ops)?;
        let record = Record {
            seq,
            ops: ops.clone(),
        };
        let envelope = format::seal_record(&record, seal, self.channel.id)?;
        let envelope_len = envelope.len();
        let has_riders = !riders.attachments.is_empty();
        let (content, record_attachment) = format::record_message_parts(envelope, &self.limits());
        let mut message = NewMessage {
            content,
            attachments: riders.attachments,
        };
        message.attachments.extend(record_attachment);
        let mut data_messages = riders.data_messages;
        let posted = if self.fits(&message) {
            self.store.post(self.channel.id, message).await?
        } else if !has_riders {
            return Err(self.too_large_record(&ops, envelope_len));
        } else {
            let Some(file) = riders.file else {
                return Err(VolumeError::Internal(
                    "a batch of small files does not fit one message".into(),
                ));
            };
            if let Some(journal) = riders.journal {
                journal.ensure_started();
            }
            // The record doesn't fit beside the chunks: store those on their own first,
            // then post the record alone, naming them by id.
            let chunks: Vec<NewAttachment> = message
                .attachments
                .into_iter()
                .filter(|a| a.filename != format::RECORD_ATTACHMENT)
                .collect();
            let data = NewMessage {
                content: format::data_content(file),
                attachments: chunks,
            };
            let data_message = self.store.post(self.channel.id, data).await?;
            let record_posted: Result<Message, VolumeError> = async {
                for op in &mut ops {
                    if let Op::Put(manifest)
                    | Op::Relocate(format::Relocation { file: manifest, .. }) = op
                    {
                        transfer::resolve_attached(&data_message, &mut manifest.chunks)?;
                    }
                }
                let record = Record {
                    seq,
                    ops: ops.clone(),
                };
                let envelope = format::seal_record(&record, seal, self.channel.id)?;
                let envelope_len = envelope.len();
                let (content, attachment) = format::record_message_parts(envelope, &self.limits());
                let message = NewMessage {
                    content,
                    attachments: attachment.into_iter().collect(),
                };
                if !self.fits(&message) {
                    return Err(self.too_large_record(&ops, envelope_len));
                }
                Ok(self.store.post(self.channel.id, message).await?)
            }
            .await;
            match record_posted {
                Ok(message) => {
                    data_messages.push((data_message.id, file));
                    message
                }
                Err(e) => {
                    let orphan = [data_message.id];
                    transfer::delete_quietly(self.store.as_ref(), self.channel.id, &orphan).await;
                    return Err(e);
                }
            }
        };
        {
            let mut index = self.index();
            for &(message, file) in &data_messages {
                index.note_own(message, Own::Data(file));
            }
            index.note_own(posted.id, Own::Record);
        }
        self.wrote.store(true, std::sync::atomic::Ordering::Relaxed);
        let record = Record { seq, ops };
        let replaced_something = self.apply_own(&posted, &record);
        drop(posting);
        // What it replaced waits out the grace period; a pass now is worth its re-read
        // of the channel only if something is due already.
        if replaced_something && self.frees_due() {
            self.free_after_change().await;
        }
        Ok((posted, record))
    }

    /// The error for a record that doesn't fit a message even alone.
    fn too_large_record(&self, ops: &[Op], bytes: usize) -> VolumeError {
        VolumeError::ManifestTooLarge {
            name: self.display(ops.first().map_or("", Op::path)),
            bytes,
        }
    }

    /// Whether a message is within the store's limits.
    pub(super) fn fits(&self, message: &NewMessage) -> bool {
        let limits = self.limits();
        message.attachments.len() <= limits.max_attachments
            && message.attachment_bytes() <= limits.max_request_size
            && message
                .attachments
                .iter()
                .all(|a| a.data.len() as u64 <= limits.max_file_size)
    }

    /// Reads one page of history (see the module docs).
    pub(super) async fn read_page(&self, page: &[Message]) -> Result<(), VolumeError> {
        let opened = self.open_records(page).await?;
        self.apply_page(page, opened);
        Ok(())
    }

    /// The records of a page of history that can be read, opened (their attachments
    /// fetched, [`RECORD_FETCHES`] at once), by their place in the page. This needs
    /// nothing the page's messages before them change in the index, so
    /// [`super::Volume::catch_up`] opens the pages after the one it applies meanwhile.
    pub(super) async fn open_records(
        &self,
        page: &[Message],
    ) -> Result<Vec<(usize, OpenedRecord)>, VolumeError> {
        use futures::StreamExt;
        let mut messages = page.iter().enumerate();
        let mut reads = futures::stream::FuturesUnordered::new();
        let mut opened = Vec::new();
        loop {
            while reads.len() < RECORD_FETCHES {
                let Some((at, message)) = messages.next() else {
                    break;
                };
                reads.push(self.read_record_at(at, message));
            }
            match reads.next().await {
                Some(read) => opened.extend(read?),
                None => return Ok(opened),
            }
        }
    }

    /// [`Volume::read_record`], with the message's place in its page.
    async fn read_record_at(
        &self,
        at: usize,
        message: &Message,
    ) -> Result<Option<(usize, OpenedRecord)>, VolumeError> {
        Ok(self.read_record(message).await?.map(|record| (at, record)))
    }

    /// Applies a page of history whose records [`Volume::open_records`] opened: notes
    /// which messages are ours and of what kind, and accepts the records, greater
    /// format versions first, then in message order.
    pub(super) fn apply_page(&self, page: &[Message], mut opened: Vec<(usize, OpenedRecord)>) {
        {
            let mut index = self.index();
            for message in page {
                if message.author_id != self.user {
                    if !message.attachments.is_empty() {
                        index.note_foreign(message.id);
                    }
                    continue;
                }
                match format::classify(&message.content) {
                    MessageKind::Data(Some(file)) => index.note_own(message.id, Own::Data(file)),
                    MessageKind::InlineRecord(_) | MessageKind::AttachedRecord => {
                        index.note_own(message.id, Own::Record)
                    }
                    MessageKind::Checkpoint => index.note_own(message.id, Own::Checkpoint),
                    MessageKind::Data(None) | MessageKind::Other => {}
                }
            }
        }
        opened.sort_by_key(|(at, record)| (std::cmp::Reverse(record.version), page[*at].id));
        for (at, record) in opened {
            self.accept(&page[at], record);
        }
    }

    /// Reads the records that couldn't be read before ([`super::Index::unread`]).
    pub(super) async fn read_unread(&self) -> Result<(), VolumeError> {
        let unread: Vec<Id> = self.index().unread.iter().copied().collect();
        for id in unread {
            match self.store.message(self.channel.id, id).await {
                Ok(message) => self.read_page(std::slice::from_ref(&message)).await?,
                Err(e) if e.is_not_found() => {
                    let mut index = self.index();
                    index.unread.remove(&id);
                    index.forget_own(id);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The record of one message from history, opened, if it is one of ours that can
    /// be read; otherwise notes why not.
    pub(super) async fn read_record(
        &self,
        message: &Message,
    ) -> Result<Option<OpenedRecord>, VolumeError> {
        if message.author_id != self.user {
            log::debug!(
                "#{}: message {} is someone else's; ignored",
                self.channel.name,
                message.id
            );
            return Ok(None);
        }
        let envelope = match format::classify(&message.content) {
            MessageKind::InlineRecord(envelope) => envelope,
            MessageKind::AttachedRecord => match self.fetch_record(message).await? {
                Some(bytes) => bytes.to_vec(),
                None => return Ok(None),
            },
            MessageKind::Data(_) | MessageKind::Checkpoint | MessageKind::Other => return Ok(None),
        };
        match format::open_record(&envelope, self.key.as_ref(), self.channel.id) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                self.note_skip(message.id, skip_for(e));
                Ok(None)
            }
        }
    }

    /// The bytes of a record attachment, bounded by the store's per-file limit and the
    /// size the message announces; `None` if there is none to read now (noted why).
    async fn fetch_record(&self, message: &Message) -> Result<Option<Bytes>, VolumeError> {
        let Some(attachment) = message.attachment_named(format::RECORD_ATTACHMENT) else {
            self.note_skip(
                message.id,
                Skip::Damaged("record attachment missing".into()),
            );
            return Ok(None);
        };
        let cap = self.limits().max_file_size;
        if attachment.size > cap {
            self.note_skip(
                message.id,
                Skip::Damaged(format!(
                    "record attachment of {} bytes, over the store's limit of {cap}",
                    attachment.size
                )),
            );
            return Ok(None);
        }
        let fetched = self
            .store
            .fetch_attachment(self.channel.id, message.id, attachment.id, attachment.size)
            .await;
        match fetched {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => {
                // Deleted meanwhile, or refused by the CDN although the message is
                // there: then read it again at the next refresh.
                match self.store.message(self.channel.id, message.id).await {
                    Err(gone) if gone.is_not_found() => Ok(None),
                    _ => {
                        if self.index().unread.insert(message.id) {
                            log::warn!(
                                "#{}: could not fetch the record in message {} ({e}); will \
                                 try again",
                                self.channel.name,
                                message.id
                            );
                        }
                        Ok(None)
                    }
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a record read from history if it counts (see the module docs).
    fn accept(&self, message: &Message, opened: OpenedRecord) {
        let mut index = self.index();
        if self.key.is_some() {
            let refused = match opened.version {
                1 if index.cutover().is_some_and(|cutover| message.id > cutover) => Some(
                    "a version-1 record posted after the channel's first version-2 record (a \
                     copy or a forgery)",
                ),
                1 => None,
                _ if !opened.authenticated => {
                    Some("a plain record that your key did not sign (written without a key)")
                }
                _ => {
                    index.note_authenticated(message.id);
                    None
                }
            };
            if let Some(why) = refused {
                drop(index);
                self.note_skip(message.id, Skip::Unauthenticated(why.into()));
                return;
            }
        }
        match index.apply(message, &opened.record, opened.version, opened.sealed_by) {
            Ok(mut outdated) => {
                drop(index);
                // A relocation a newer change had replaced already is what it should be.
                outdated.retain(|o| !o.relocation);
                if outdated.is_empty() || !self.first_warning(message.id) {
                    return;
                }
                for o in outdated {
                    log::warn!(
                        "#{}: the record in message {} changes '{}' as of seq {}, but \
                         message {} changed it later (seq {}); ignored: a copy of an older \
                         record posted again, or a writer that had not seen the newer one",
                        self.channel.name,
                        message.id,
                        o.path,
                        o.seq,
                        o.current_message,
                        o.current_seq
                    );
                }
            }
            Err(why) => {
                drop(index);
                self.note_skip(message.id, Skip::Damaged(why));
            }
        }
    }

    /// Whether this is the first warning about message `message` in this process.
    fn first_warning(&self, message: Id) -> bool {
        self.warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(message)
    }

    pub(super) fn note_skip(&self, message: Id, why: Skip) {
        let news = self.index().skip(message, why.clone());
        if !news {
            return;
        }
        let channel = &self.channel.name;
        // Another key, or none, is the user's choice: the commands say so where it
        // matters (ls notes, "wrong key" on get). Damage and forgeries are worth a
        // warning.
        match why {
            Skip::WrongKey(written) => {
                log::info!(
                    "#{channel}: record in message {message} is sealed with another key (key id {written})"
                )
            }
            Skip::NoKey(written) => {
                log::info!(
                    "#{channel}: record in message {message} is encrypted (key id {written}) and no key is loaded"
                )
            }
            Skip::NewerVersion(v) => {
                log::warn!(
                    "#{channel}: record in message {message} skipped: written by a newer dcloud-fs (format {v})"
                )
            }
            Skip::Unauthenticated(why) => {
                log::warn!("#{channel}: record in message {message} not taken: {why}")
            }
            Skip::Damaged(why) => {
                log::warn!("#{channel}: record in message {message} skipped: damaged: {why}")
            }
        }
    }
}

/// Why a record that failed to open is skipped.
fn skip_for(e: FormatError) -> Skip {
    match e {
        FormatError::Crypto(CryptoError::WrongKey { written, .. }) => Skip::WrongKey(written),
        FormatError::Crypto(CryptoError::NoKey { written }) => Skip::NoKey(written),
        FormatError::NewerVersion(version) => Skip::NewerVersion(version),
        e => Skip::Damaged(e.to_string()),
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub(super) fn now_ns() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Sets the change time of everything `ops` put or make to `now_ns` (format version
/// 8's `ctime_ns`): a record is the change. A relocation is not one (it names the put it
/// moves as it was).
fn stamp_change_time(ops: &mut [Op], now_ns: i64) {
    for op in ops {
        match op {
            Op::Put(file) => file.meta.ctime_ns = Some(now_ns),
            Op::Mkdir(dir) => dir.meta.ctime_ns = Some(now_ns),
            Op::Del { .. } | Op::Link { .. } | Op::Relocate(_) => {}
        }
    }
}
