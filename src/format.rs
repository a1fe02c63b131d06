//! The on-Discord format, version 8: the contract between every dcloud-fs that ever reads
//! or writes a channel. This page is meant to be enough to write a second reader.
//!
//! A channel holds a file's bytes as **chunks** (attachments) and its metadata as
//! **records** (sealed JSON). Every message dcloud-fs posts is one of two kinds, told
//! apart by its text content:
//!
//! | content                 | kind |
//! |-------------------------|------|
//! | `dcfs1 data <file id>`  | data message: only chunk attachments, of the file with that id (32 hex digits) |
//! | `dcfs1 <base64url>`     | record message, record inline (unpadded base64url of the record envelope) |
//! | `dcfs1 @record.dcfr`    | record message, record envelope in the attachment named `record.dcfr` |
//! | `dcfs1 checkpoint <id> <id>[ <id>,…]` | checkpoint head (version 5), pinned; see Checkpoints |
//! | `dcfs1 checkpoint part` | the first parts of a checkpoint too large for its head (version 5) |
//!
//! A record message may also carry chunk attachments of its own: a small file is a single
//! message (its chunks and its record together), many small files share one (a record
//! with one `put` for each, their chunks packed end to end in a few attachments, see
//! Packs), and a large file's last chunks ride in the message of its record. Messages by other authors, and messages whose content
//! doesn't start with `dcfs1 `, are not part of the file system.
//!
//! ## Chunks
//!
//! A file's bytes are cut into chunks, each stored as one attachment with an opaque name
//! (`c<n>.bin`, numbered by position in the message; names carry no meaning and readers
//! must not rely on them except to resolve a record's own attachments, below), or as a
//! byte range of a *pack* attachment that holds the chunks of several files (below).
//! Which of three kinds a chunk is follows from its record (below): a plain file's
//! chunks are plain; an encrypted file's chunk is segmented if its reference has `p`,
//! else whole.
//!
//! A **segmented chunk** (chunk version 2, written by format version 3) is sealed in
//! segments of 65,536 plaintext bytes (the last one shorter; an empty chunk has one,
//! empty), so that any byte range can be read by fetching and opening only the
//! segments that cover it:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DCFC"
//! 4       1     chunk format version (2)
//! 5       8     nonce prefix P, random for every sealing
//! 13      …     segment 0, segment 1, …, segment k−1
//! ```
//!
//! where segment `i` is the AES-256-GCM ciphertext of plaintext bytes
//! `65536·i .. min(65536·(i+1), n)` followed by its 16-byte tag. So segment `i` starts
//! at byte `13 + 65552·i`, and the attachment is `13 + n + 16·k` bytes for `n`
//! plaintext bytes in `k = max(1, ⌈n / 65536⌉)` segments. Segment `i` is sealed under
//! the file's **data key** (`dk`, below) with
//!
//! - nonce `P ‖ i` (i as u32, big endian), and
//! - associated data `"DCFC" ‖ 2 ‖ file id (16 bytes) ‖ chunk index (u64, little
//!   endian) ‖ i (u32, little endian) ‖ last`, where `last` is 1 for segment `k−1` and 0
//!   otherwise.
//!
//! So a segment moved to another place, file or chunk fails to open, and so does a
//! chunk cut short (its last segment then lacks the flag) or with a segment dropped.
//! The record names `P` (`p`), and a reader derives the nonces from the record's `P`,
//! not from the attachment: an older sealing of the same chunk (another `P`) fails to
//! open, so a chunk can't be rolled back. Prefixes are random per sealing (64 bits);
//! a data key seals a few chunks per version of one file, so they don't repeat.
//!
//! A **whole chunk** (chunk version 1, written by format versions 1 and 2) is
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DCFC"
//! 4       1     chunk format version (1)
//! 5       12    nonce, random for every chunk
//! 17      n     AES-256-GCM ciphertext of the n plaintext bytes
//! 17+n    16    AES-256-GCM tag
//! ```
//!
//! sealed under the channel key (or the one `k` names) with associated data `"DCFC" ‖
//! 1 ‖ file id (16 bytes) ‖ chunk index (u64, little endian)`; it opens only whole.
//! A **plain chunk** (plaintext mode, for files meant to be shared) is the file's bytes
//! as they are, so anyone can download and concatenate the attachments; its integrity
//! comes from the SHA-256 that the record keeps for it, so it too is checked whole.
//!
//! ### Packs (version 4)
//!
//! A **pack** is an attachment holding the sealed chunks of several files laid end to
//! end, each exactly as it would be as an attachment of its own (a segmented or a plain
//! chunk, with its header). The reference to such a chunk adds `o`, the byte offset in
//! the attachment where the sealed chunk starts; the chunk ends where its kind says
//! (`13 + n + 16·k` bytes on for a segmented chunk, `n` for a plain one, `33 + n` for a
//! whole one), and everything above (segment offsets, nonces, associated data, `p`, `h`)
//! is counted from `o`, as if the chunk were the attachment. So a reader fetches just
//! the byte range of the file (or of the segments) it reads. Bytes of a pack that no
//! chunk reference covers mean nothing. A reference without `o` is the whole
//! attachment. dcloud-fs packs files small enough to be one chunk that are stored
//! together (a folder copied in, files closed together through the mount): one
//! message holds the packs and the one record that puts them all. Readers must accept
//! an `o` of at most 2^40 and refuse a larger one, and refuse `o` in a record older
//! than version 4.
//!
//! ## Record envelope
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DCFR"
//! 4       1     record format version (9; versions 8, 7, 6, 5, 4, 3, 2 and 1 have the
//!               same layout, and version 1 differs as described below)
//! 5       1     cipher: 0 = none (the JSON is readable), 1 = AES-256-GCM
//! 6       8     key id of the key that sealed (cipher 1) or signed (cipher 0) the
//!               record; zero for a plain record written without a key
//! 14      …     cipher 1:           nonce (12) ‖ AES-256-GCM ciphertext of the JSON ‖ tag (16)
//!               cipher 0, signed:   nonce (12) ‖ the JSON ‖ tag (16)
//!               cipher 0, unsigned: the JSON
//! ```
//!
//! Both ciphers bind the record to its channel: the associated data starts with bytes
//! 0..14 of the envelope followed by the id of the channel the record is posted in
//! (u64, little endian), so a record copied into another channel fails to open.
//!
//! - **cipher 1** encrypts the JSON under the key, associated data `bytes 0..14 ‖
//!   channel id`.
//! - **cipher 0, signed** (plain records written by someone holding a key) keeps the
//!   JSON readable to anyone, and authenticates it: the tag is AES-256-GCM's tag for an
//!   empty plaintext under the *record MAC key*, with that nonce and associated data
//!   `bytes 0..14 ‖ channel id ‖ JSON` (that is, GMAC). The record MAC key is
//!   SHA-256("dcloud-fs record mac v2\0" ‖ key), so the MAC never uses the encryption
//!   key itself. A reader without the key reads the JSON without checking the tag.
//!
//! The key id is the first 8 bytes of SHA-256("dcloud-fs key id v1\0" ‖ key): a reader
//! with another key can say so instead of failing obscurely. A reader meeting a higher
//! version skips the record (it was written by a newer dcloud-fs).
//!
//! **Which records count.** A reader that holds a key takes only records that key
//! authenticated: sealed or signed by it. Unsigned plain records, and records of another
//! key, are skipped (and counted, so `ls` can say why files are missing). A reader
//! without a key takes every plain record, signed or not, without checking.
//!
//! ## Record JSON
//!
//! A record is one atomic batch of operations on paths, applied in order, with its
//! place in the channel's order of changes:
//!
//! ```json
//! {"seq":42,"ops":[
//!   {"op":"put","path":"photos/2024/a.jpg","id":"<32 hex digits>","size":12345,
//!    "mtime_ns":1732550000000000000,"mode":420,"encrypted":true,"dk":"<64 hex digits>",
//!    "chunks":[{"m":"<message id>","a":"<attachment id>","n":8388608,"p":"<16 hex>"},
//!              {"f":"c1.bin","n":3629,"p":"<16 hex>"}]},
//!   {"op":"put","path":"photos/2024/small.txt", …,
//!    "chunks":[{"f":"c0.bin","o":48213,"n":1200,"p":"<16 hex>"}]},
//!   {"op":"mkdir","path":"photos/empty","mtime_ns":1732550000000000000,"mode":493},
//!   {"op":"del","path":"old/name.txt"}
//! ]}
//! ```
//!
//! - `seq` (version 2) is a Lamport clock of the channel: one more than the highest
//!   `seq` of any record the writer had read in the channel when it wrote this one. It
//!   is sealed (or signed) with the record, so a record posted again later keeps its
//!   old place (see Replay).
//! - `put` creates or replaces the file at `path`. `id` is the file id (random per
//!   upload, kept across renames) that chunk AAD binds. `size` is the sum of the chunks'
//!   `n`. `mtime_ns` is nanoseconds since the Unix epoch (may be negative), `mode` the
//!   permission bits. Each chunk names its attachment either by ids (`m` message, `a`
//!   attachment, decimal strings like Discord's; plus `c`, the channel, when the message
//!   is in another channel than the record) or, for chunks attached to the record's own
//!   message, by file name (`f`); `n` is its plaintext length; plain files add `h`, the
//!   chunk's SHA-256 in hex; encrypted chunks add `t`, the chunk's AES-GCM tag in hex;
//!   a chunk in a pack adds `o` (version 4), its offset in the attachment.
//!   A whole chunk sealed by another key than the record (a file written under an
//!   older key and renamed under a newer one) names that key's id in `k`.
//!   Segmented chunks (version 3) add `p`, the chunk's nonce prefix in hex, instead of
//!   `t`, and the `put` of a file that has them carries `dk`: the file's **data key**,
//!   32 random bytes in hex, made for the file when it is first written and kept by
//!   every later version (whose unchanged chunks stay as they are). Its segmented
//!   chunks are sealed under it. A `dk` appears only in encrypted records (cipher 1),
//!   so it is as secret as the record; handing it out (with the file id and chunk
//!   list) lets someone read that one file and nothing else, and a new channel key
//!   only needs records sealed again, not data uploaded again. A plain file has neither
//!   `p` nor `dk`, and a record of version 1 or 2 neither.
//!   A `put` with `symlink` (version 7), `{"op":"put","path":…,"id":…,"size":0,
//!   "mtime_ns":…,"mode":511,"encrypted":true,"chunks":[],"symlink":"../target"}`, puts a
//!   **symbolic link** whose target is that string (1 to 4,095 bytes, no NUL; any
//!   bytes a link may hold, as UTF-8, not checked as a path: it is what `readlink`
//!   gives). It has no chunks, size 0 and no `dk`, and is sealed like the rest of the
//!   record (readable only in a plain record). Everything else about a path holds for
//!   it as for a file: renames, moves, deletes and replay; a reader refuses the whole
//!   record as damaged when a link has contents, or appears before version 7.
//!   A `put` with `special` (version 7), `{…,"size":0,"mode":420,"chunks":[],
//!   "special":{"type":"fifo","rdev":0}}`, puts a **special file**: `type` is one of
//!   `fifo`, `socket`, `char` (a character device) and `block` (a block device), and
//!   `rdev` the device number as Linux's `st_rdev` (0 for a FIFO or a socket; `rdev`
//!   may be left out when 0). It has no chunks, size 0, no `dk` and no `symlink`; a
//!   reader refuses the record as damaged otherwise, or before version 7.
//!   A `put` or `mkdir` of version 8 may say more of its entry (each field may be left
//!   out, and is then as before version 8): `uid` and `gid`, the owner's user and
//!   group ids (numbers, not -1; absent: whoever mounts the channel owns it, which is
//!   how every older entry reads); `atime_ns`, the access time set by `utimensat`
//!   (absent: the modification time; reading a file doesn't change it); `ctime_ns`,
//!   when the entry last changed (absent: the modification time); and `xattrs`, its
//!   extended attributes, an object from name to value, each value unpadded base64url
//!   of its bytes, for example `"xattrs":{"user.origin":"aHR0cHM6Ly8"}`. A name is of
//!   the namespace `user.`, `trusted.`, `security.` or `system.` with something after
//!   it, at most 255 bytes, without NUL; a value is at most 65,536 bytes, and names and
//!   values add up to at most 131,072 bytes per entry. A reader refuses the record as
//!   damaged when any of that is broken, or appears before version 8.
//!   A `put` of version 8 with `"node":"<32 hex digits>"` is one name of a file that has
//!   several (**hard links**): every live path whose put names the same `node` is a
//!   name of one file, whose link count (`st_nlink`) is the number of such paths. The
//!   node is 16 random bytes, made when the file gets its second name; it is not the
//!   file id, which a file keeps when it moves to another channel and back. A writer
//!   that changes the file (contents, mode, owner, times, attributes) puts every one of
//!   its names in the same record with the same fields but `path`, so they agree; a
//!   name replaced by a rename or deleted just leaves the others. (Two writers on
//!   different machines that change the names at once without seeing each other can
//!   leave them different: each name then reads as its own put says.) Hard links are
//!   within one channel; a `put` without `node` is a file of one name.
//!   A new version of a file keeps the file id and reuses the chunks it didn't change,
//!   so `t` is what tells a reader that a chunk is this version's and not an older one
//!   at the same index (whose seal would otherwise open fine); a reader checks it.
//! - `mkdir` records a folder that exists even when empty, with its `mtime_ns` and
//!   `mode` (and, from version 8, the owner, times and attributes of a `put`).
//! - `link` (version 2), `{"op":"link","path":…,"moved":{"to":…,"messages":[…]}}`, says
//!   that the file at `path` is being moved to channel `to`, whose record will name
//!   those messages: from now on they are used there too. It changes nothing at `path`.
//!   A move posts it before the destination's record, so that a crash between the two
//!   channels' records can't let a delete here free what the destination uses.
//! - `relocate` (version 6), `{"op":"relocate","s":{"seq":41,"m":"<message id>","i":3},
//!   "path":…,"id":…,"size":…, …,"chunks":[…]}`, moves the chunks of an earlier `put`:
//!   `s` is that put's stamp (its record's `seq`, 0 for a version-1 record; its message
//!   `m`, a decimal string; its position `i` in that record), and the other fields are
//!   a `put`'s, naming the same file version (the same path, `id`, `size`, `mtime_ns`,
//!   `mode`, `encrypted` and `dk`; each chunk with the same `n`, `h`, `t`, `k` and `p`)
//!   with the chunks where they are now (typically `f` and `o`: copied, byte for byte,
//!   into packs of the relocation's own message; a sealed chunk doesn't depend on where
//!   it lies). `gc` posts it to free a record message whose other puts are dead. It
//!   holds the path with stamp `s` itself, not its own record's, and at that stamp it
//!   wins over the put it relocates (see Replay), so it changes nothing about who wins
//!   the path. A reader refuses the whole record as damaged when a relocation names a
//!   message not older than its own, a `seq` not lower than its record's, or, when the
//!   path holds stamp `s`, a file id that isn't the one held there.
//! - `del` is a tombstone: the path (file or folder) no longer exists. A file moved to
//!   another channel is deleted with `"moved":{"to":"<channel id>","messages":
//!   ["<channel id>/<message id>", …]}`: the destination's record now points at those
//!   messages, which stay. Whoever later deletes or replaces the file frees them, once no
//!   channel on the file's path of moves still uses them.
//!
//! Paths are relative to the channel, `/`-separated UTF-8, with no empty, `.` or `..`
//! component, no NUL, components of at most 255 bytes. Folders other than those made by
//! `mkdir` exist implicitly as parents of paths.
//!
//! ## Replay
//!
//! A channel's contents are its records replayed in the order of their changes: for
//! every path, the operation with the highest *stamp* wins, where a record's of version 2
//! or later stamp is `(seq, then the lower message id, then the later position in the
//! record)` and every such record stamps higher than every version-1 record (whose stamps
//! are `(message id, position)`). A `relocate` (version 6) takes the stamp `s` of the
//! put it relocates; at one stamp, a relocation wins over the put itself, and of two
//! relocations of one put the one in the later message wins (so a put read after its
//! relocation doesn't land, and one read before is replaced). Replay is therefore
//! independent of the order in which messages are read, and every reader converges on
//! the same version of a path. Two
//! writers that wrote one path without seeing each other's record may pick the same
//! `seq`: the record posted first (lower message id) wins, on every reader. A copy of
//! a record posted again later has a higher message id and the same `seq` as the
//! original, or a lower one than the path's newer versions, so it never wins; readers
//! log it.
//!
//! Chunk references in a record must name messages of the bot's own: in the record's
//! channel, a data message (`dcfs1 data <id>`) of the same file id, or a record
//! message. A reader refuses a record that names any other message.
//!
//! ## Checkpoints (version 5)
//!
//! A **checkpoint** is a channel's whole replayed state, so that a reader with nothing
//! cached can start from it and replay only the messages after it. It changes nothing:
//! a reader that ignores checkpoints and replays everything reaches the same state
//! (up to messages deleted since, which only a checkpoint can still remember).
//!
//! Its **envelope** has the record envelope's layout and rules (associated data, key
//! id, ciphers) with magic `"DCFK"` and version 5 or later (9 now): cipher 1
//! (encrypted under the key) when written with a key, cipher 0 unsigned when written
//! without one; never signed.
//! A reader holding a key takes only checkpoints its key sealed; a reader without a key
//! only unsigned ones. The envelope is cut into pieces of at most the store's per-file
//! limit, attached in order as `k0.bin`, `k1.bin`, … to as few messages as the limits
//! allow. All but the last are *part* messages (content `dcfs1 checkpoint part`); the
//! last is the *head*, whose content is `dcfs1 checkpoint <last seen> <collected>`
//! (the body's fields of those names) followed, if there are part messages, by a space
//! and their ids in order, comma-separated (at most 90). The envelope is the part messages' pieces in order, then the head's. The head
//! is pinned; readers find checkpoints through the channel's pins and try the bot's
//! heads newest first, passing over (and logging) any that don't assemble, open and
//! check. The content is not authenticated; a wrong part list fails to open. Readers
//! refuse an envelope over 1 GiB.
//!
//! Its **body** is binary from version 9 on (see *The binary body* below: the same
//! fields in the same order), and JSON in versions 5 to 8:
//!
//! ```json
//! {"channel":"<id>","last_seen":"<id>","collected":"<id>","max_seq":42,"cutover":"<id>",
//!  "paths":[{"s":{"seq":42,"m":"<message id>","i":0},"op":{"op":"put","path":…}}, …],
//!  "records":["<id>",…],"data":[{"id":"<file id>","m":["<id>",…]},…],
//!  "tombstones":["<id>",…],"foreign":["<id>",…],
//!  "moved_out":[{"c":"<channel>","m":"<message>","to":"<channel>","s":{…}},…],
//!  "unread":["<id>",…]}
//! ```
//!
//! - `channel` is the channel (it must be the one the head is in), and `last_seen` the
//!   newest message whose record the state includes (it must be older than the head
//!   and equal the head's `<last seen>`). A reader replays the messages after it as
//!   after a cache (see Replay), starting a few seconds earlier in case a message with a
//!   smaller id became visible late.
//! - `paths`: for every path the replay has seen, the operation that holds it, as in a
//!   record (`put` with every chunk by `m` and `a`, and `c` when in another channel;
//!   `mkdir`; or `del` for a tombstone, without `moved`), with its stamp `s`: the
//!   record's `seq` (0 for a version-1 record), its message `m`, and the operation's
//!   position `i` in it. The record message of a `put` or `mkdir` is `s.m`, unless a
//!   `relocate` set the path (version 6): then the path adds `"r":"<message id>"`, the
//!   relocation's message, which is the file's record message (`s` stays the stamp of
//!   the put relocated, and `r` lies between `s.m` and the head). Each path appears
//!   once, held by a `put`, `mkdir` or `del` (never a `link` or a `relocate`); puts are
//!   checked as a record's are.
//! - `collected` is `"0"`, or the message before which `gc` deleted tombstones and
//!   records no path needs any more (it is at most `last_seen`): a reader whose state
//!   (a cache, or an older checkpoint) covers less than that may lack deletes that are
//!   gone and must start again from this checkpoint. `gc` deletes a tombstone only
//!   when no message left in the channel puts its path, so a full replay still finds
//!   every file that exists, and it retires every older checkpoint of its key.
//! - `max_seq` is the highest `seq` read or written (the next record's is one more);
//!   `cutover` the first version-2 record the key authenticated (see Version 1).
//! - `records`, `data`: the bot's own record messages and data messages (by file id)
//!   the writer knew of, so that a later record naming one of them is checked as
//!   Replay says, and so that what a later change frees can be deleted.
//! - `tombstones`: the messages carrying tombstones; `foreign`: other authors' messages
//!   with attachments (a record naming one is refused); `moved_out`: every link of a
//!   file moved away (see `link` and `del`), each with the stamp of its newest moved
//!   delete; `unread`: record messages that couldn't be read when it was written, to be
//!   read again.
//!
//! ### The binary body (version 9)
//!
//! The body of a checkpoint of version 9 or later is the JSON body's state in
//! [postcard](https://postcard.jamesmunns.com/wire-format) (1.x): no field names, each
//! field in the order below. Unsigned integers (`u32`, `u64`, ids, `seq`, lengths) are
//! LEB128 varints; `i64` are zigzag-encoded varints; `bool` and `u8` one byte;
//! `[u8; N]` N bytes; a string or a list is a varint count then its UTF-8 bytes or its
//! items; an option is a byte 0 (none) or 1 followed by the value; an enum a varint
//! variant number then its fields. Nothing follows the body.
//!
//! ```text
//! body    = channel:u64 last_seen:u64 collected:u64 max_seq:u64 cutover:option<u64>
//!           paths:list<path> records:list<u64> data:list<([u8;16] file id, list<u64>)>
//!           tombstones:list<u64> foreign:list<u64> moved_out:list<move> unread:list<u64>
//! stamp   = seq:u64 m:u64 i:u32
//! move    = c:u64 m:u64 to:u64 s:stamp
//! path    = s:stamp r:option<u64> path:string held
//! held    = 0 file (a put) | 1 dir (a mkdir) | 2 (a del)
//! file    = id:[u8;16] size:u64 mtime_ns:i64 mode:u32 encrypted:bool chunks:list<chunk>
//!           dk:option<[u8;32]> symlink:option<string>
//!           special:option<(kind:u8 rdev:u64)> node:option<[u8;16]> meta
//! dir     = mtime_ns:i64 mode:u32 meta
//! chunk   = c:option<u64> m:u64 a:u64 n:u64 sha256:option<[u8;32]> tag:option<[u8;16]>
//!           k:option<[u8;8]> p:option<[u8;8]> o:option<u64>
//! meta    = uid:option<u32> gid:option<u32> atime_ns:option<i64> ctime_ns:option<i64>
//!           xattrs:list<(name:string, value:list<u8>)>
//! ```
//!
//! Each field means what its JSON namesake means (a chunk's `c`, `m`, `a`, `n`, `k`,
//! `p`, `o` as in a record; `sha256` and `tag` the bytes its hex `h` and `t` hold); a
//! special file's kind is 0 FIFO, 1 socket, 2 character device, 3 block device;
//! xattrs are in name order. The checks are the JSON body's.
//!
//! ## Versions
//!
//! Version 9 (this one) writes a checkpoint's body in binary (see Checkpoints): the
//! JSON body of 100,000 files was 44 MB, and parsing it most of a fresh machine's
//! mount. Records are as in version 8. Its records and checkpoints carry version byte
//! 9, so a reader of version 8 skips them as newer (checkpoints: passed over for an
//! older one, or a full replay).
//!
//! Version 8 added owners, access and change times, extended attributes
//! (`uid`, `gid`, `atime_ns`, `ctime_ns`, `xattrs` in a `put` or `mkdir`) and hard
//! links (`node` in a `put`); everything else is as in version 7. Its records and
//! checkpoints carry version byte 8, so a reader of version 7 skips them as newer.
//!
//! Version 7 added symbolic links and special files: `symlink` and
//! `special` in a `put` (and so in a checkpoint's paths); everything else is as in
//! version 6. Its records and
//! checkpoints carry version byte 7, so a reader of version 6 skips them as newer.
//!
//! Version 6 added `relocate`, and `r` in checkpoints; everything else is as
//! in version 5. Every record and checkpoint it writes carries version byte 6, so a
//! reader of version 5 skips them as newer (records: logged as written by a newer
//! dcloud-fs; checkpoints: passed over for an older one, or a full replay). Such a
//! reader also can't follow a relocation: once `gc` has repacked a record and deleted
//! the old message, the files relocated read as missing chunks there until it is
//! upgraded.
//!
//! Version 5 added checkpoints; its records are as in version 4 (a reader of
//! version 4 skips them as newer, and ignores checkpoint messages, whose content it
//! doesn't recognise).
//!
//! Version 4 added packs (`o`); everything else is as in version 3. A reader
//! of version 3 skips version-4 records as newer, so it never misreads a packed chunk
//! as a whole attachment.
//!
//! Version 3 added segmented chunks (`p`) and data keys (`dk`); everything else is as
//! in version 2. Version-2 records have the same envelope and associated
//! data (with version byte 2) and put only whole and plain chunks.
//!
//! ## Version 1
//!
//! Version-1 records (envelope version byte 1) have the same layout without the
//! channel in the associated data and without signed plain records (cipher 0 is always
//! the bare JSON, key id zero), and their JSON has no `seq`: they replay by message id,
//! the highest winning. Its chunks are whole or plain, as in version 2. A reader holding a key
//! takes a channel's version-1 records only if they were posted before the channel's
//! first version-2 record that the key authenticated (the *cutover*): after it, a
//! version-1 record can only be a copy or a forgery. Version 1 used `"dcfs1 "` as the
//! content prefix too; the prefix names the message kinds, not the format version.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError};
use crate::store::{Limits, NewAttachment};

mod checkpoint;
mod chunk;
mod record;

pub use checkpoint::*;
pub use chunk::*;
pub use record::*;

/// The record format version this code writes (it reads this one and every older).
pub const FORMAT_VERSION: u8 = 9;
/// First bytes of a record envelope.
pub const RECORD_MAGIC: [u8; 4] = *b"DCFR";
/// Prefix of the content of every message dcloud-fs posts.
pub const CONTENT_PREFIX: &str = "dcfs1 ";
/// Start of the content of a data message; the file id follows after a space. The id
/// lets an upload that died midway find and delete the data messages it left behind.
pub const DATA_CONTENT: &str = "dcfs1 data";

/// The content of a data message holding chunks of `file`.
pub fn data_content(file: FileId) -> String {
    format!("{DATA_CONTENT} {file}")
}
/// Name of the attachment holding a record that is too long for the content.
pub const RECORD_ATTACHMENT: &str = "record.dcfr";
/// Longest path in a record, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest target of a symbolic link (`PATH_MAX` less its NUL).
pub const MAX_SYMLINK_BYTES: usize = 4095;

/// Errors of the format layer.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("not a dcloud-fs {0}")]
    NotOurs(&'static str),
    #[error("written by a newer dcloud-fs (format version {0}); upgrade to read it")]
    NewerVersion(u8),
    #[error("damaged {what}: {detail}")]
    Damaged { what: &'static str, detail: String },
    #[error(
        "this file is encrypted and no key is loaded; point --key-file or DCLOUD_KEY at your key"
    )]
    KeyNeeded,
    #[error("invalid path '{path}': {why}")]
    InvalidPath { path: String, why: &'static str },
}

pub(crate) fn damaged(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Damaged {
        what,
        detail: detail.into(),
    }
}

/// A file's id: 16 random bytes, shown as 32 hex digits. Chunk AAD binds it.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    /// A new random file id.
    pub fn random() -> Result<FileId, CryptoError> {
        let mut bytes = [0u8; 16];
        crypto::fill_random(&mut bytes)?;
        Ok(FileId(bytes))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crypto::encode_hex(&self.0))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

impl Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_string())
        } else {
            self.0.serialize(serializer) // the index cache: bytes
        }
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return <[u8; 16]>::deserialize(deserializer).map(FileId);
        }
        let text = String::deserialize(deserializer)?;
        crypto::decode_hex::<16>(&text)
            .map(FileId)
            .ok_or_else(|| serde::de::Error::custom("a file id is 32 hex digits"))
    }
}

/// Checks that `path` is a valid path inside a channel (see the module docs).
pub fn validate_path(path: &str) -> Result<(), FormatError> {
    let invalid = |why| {
        Err(FormatError::InvalidPath {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return invalid("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return invalid("it is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return invalid("it contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return invalid("it has an empty component (leading, trailing or double '/')"),
            "." | ".." => return invalid("'.' and '..' are not allowed"),
            c if c.len() > MAX_NAME_BYTES => return invalid("a name is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// What a message is, judged by its content.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Chunks only, of the file with this id (`None`: no valid id given).
    Data(Option<FileId>),
    /// A record, inline: the envelope bytes.
    InlineRecord(Vec<u8>),
    /// A record in the attachment [`RECORD_ATTACHMENT`].
    AttachedRecord,
    /// A checkpoint's head (the pinned message), or a message holding parts of one.
    Checkpoint,
    /// Not a dcloud-fs message (or a damaged one).
    Other,
}

/// Classifies a message by its content.
pub fn classify(content: &str) -> MessageKind {
    let Some(rest) = content.strip_prefix(CONTENT_PREFIX) else {
        return MessageKind::Other;
    };
    if let Some(rest) = content.strip_prefix(DATA_CONTENT)
        && (rest.is_empty() || rest.starts_with(' '))
    {
        return MessageKind::Data(crypto::decode_hex::<16>(rest.trim_start()).map(FileId));
    }
    if checkpoint::is_checkpoint_content(content) {
        return MessageKind::Checkpoint;
    }
    if rest.strip_prefix('@') == Some(RECORD_ATTACHMENT) {
        return MessageKind::AttachedRecord;
    }
    match BASE64URL.decode(rest) {
        Ok(envelope) => MessageKind::InlineRecord(envelope),
        Err(_) => MessageKind::Other,
    }
}

/// The content and, if the envelope is too long for the content, the attachment of a
/// record message.
pub fn record_message_parts(envelope: Vec<u8>, limits: &Limits) -> (String, Option<NewAttachment>) {
    let inline = format!("{CONTENT_PREFIX}{}", BASE64URL.encode(&envelope));
    if inline.len() <= limits.max_content_chars {
        (inline, None)
    } else {
        let attachment = NewAttachment {
            filename: RECORD_ATTACHMENT.to_string(),
            data: envelope.into(),
        };
        (
            format!("{CONTENT_PREFIX}@{RECORD_ATTACHMENT}"),
            Some(attachment),
        )
    }
}
