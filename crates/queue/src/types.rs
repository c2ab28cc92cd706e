//! The queue's public value types: ids, group handles, stored messages and their state.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use s2sink_core::{GroupKey, LastError, UnixMillis};

/// A message's id within its sink's queue: strictly increasing in acceptance order, the handle
/// the API and console use. Unique within one data directory's history; S2 record headers carry
/// the [`DeliveryId`] instead, which stays unique even when an older copy of the data directory
/// is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id written into a message's S2 record header (`s2sink-id`): the queue's [`MessageId`]
/// plus the epoch of the queue that accepted it. A queue takes a fresh random epoch every time
/// it is opened, so a restored (older) data directory or a second instance never issues a
/// delivery id that is already in the stream, and reconciliation matches the full id.
///
/// Text form: `<epoch as 16 hex digits>-<id>`; epoch 0 is reserved for messages accepted by
/// the v1 queue (before epochs existed), whose header was the plain decimal id, and prints so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId {
    /// The accepting queue's epoch (0 = accepted by a v1 queue).
    pub epoch: u64,
    /// The message's id in its sink.
    pub id: MessageId,
}

impl DeliveryId {
    /// Reads the header form back; `None` if `s` is not one.
    pub fn parse(s: &str) -> Option<DeliveryId> {
        match s.split_once('-') {
            Some((epoch, id)) if epoch.len() == 16 => {
                let epoch = u64::from_str_radix(epoch, 16).ok()?;
                let id = id.parse().ok()?;
                (epoch != 0).then_some(DeliveryId {
                    epoch,
                    id: MessageId(id),
                })
            }
            Some(_) => None,
            None => Some(DeliveryId {
                epoch: 0,
                id: MessageId(s.parse().ok()?),
            }),
        }
    }
}

impl fmt::Display for DeliveryId {
    /// Written by hand into a stack buffer, one `write_str`: every record header carries one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 16 hex digits, `-`, up to 20 decimal digits.
        let mut buf = [0u8; 37];
        let mut at = 0;
        if self.epoch != 0 {
            for i in (0..16).rev() {
                buf[at] = b"0123456789abcdef"[((self.epoch >> (4 * i)) & 0xf) as usize];
                at += 1;
            }
            buf[at] = b'-';
            at += 1;
        }
        let mut digits = [0u8; 20];
        let (mut n, mut d) = (self.id.0, digits.len());
        loop {
            d -= 1;
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let len = digits.len() - d;
        buf[at..at + len].copy_from_slice(&digits[d..]);
        f.write_str(std::str::from_utf8(&buf[..at + len]).expect("ASCII digits"))
    }
}

/// An opaque handle on one group of a sink: the unit of ordering.
///
/// A keyed message belongs to the group of its [`GroupKey`]; an ungrouped message is its own
/// single-message group, whose handle is unique to it (so it never blocks anything else).
///
/// Ordered by key text (keyed groups first, then ungrouped ones by id), as the API pages
/// through groups.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GroupRef(Repr);

/// Keys of at most this many bytes are held inside the handle.
const SHORT_KEY: usize = 22;

// Canonical: a key of at most SHORT_KEY bytes is always `Short` (zero-padded), a longer one
// always `Key`, so the derived equality and hash compare the key text.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// A short key in place (most keys: `schema.table/pk`): cloning, hashing and comparing it
    /// touch no other memory. Every ingested and delivered message clones or looks up its
    /// group's handle; as a heap string that was an allocation per clone and a cache miss per
    /// lookup (the key compare was ~1.3% of the server's CPU under load).
    Short {
        len: u8,
        bytes: [u8; SHORT_KEY],
    },
    Key(GroupKey),
    Solo(MessageId),
}

const TAG_KEY: u8 = b'k';
const TAG_SOLO: u8 = b's';

impl Repr {
    fn keyed(key: GroupKey) -> Repr {
        Repr::short(&key.0).unwrap_or(Repr::Key(key))
    }

    fn short(key: &str) -> Option<Repr> {
        let len = key.len();
        if len > SHORT_KEY {
            return None;
        }
        let mut bytes = [0u8; SHORT_KEY];
        bytes[..len].copy_from_slice(key.as_bytes());
        Some(Repr::Short {
            len: len as u8,
            bytes,
        })
    }
}

impl GroupRef {
    /// The group of a message: its key, or (ungrouped) the message itself.
    pub fn of(key: Option<GroupKey>, id: MessageId) -> GroupRef {
        match key {
            Some(k) => GroupRef(Repr::keyed(k)),
            None => GroupRef(Repr::Solo(id)),
        }
    }

    /// The group key, for display and filtering; `None` for an ungrouped message.
    pub fn key(&self) -> Option<&str> {
        match &self.0 {
            Repr::Short { len, bytes } => {
                // Built from a `&str` and cut at its length: always UTF-8.
                Some(std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default())
            }
            Repr::Key(k) => Some(k.as_str()),
            Repr::Solo(_) => None,
        }
    }

    /// The id of the single message of an ungrouped group.
    pub fn solo(&self) -> Option<MessageId> {
        match &self.0 {
            Repr::Short { .. } | Repr::Key(_) => None,
            Repr::Solo(id) => Some(*id),
        }
    }

    /// The key's bytes (`None` for an ungrouped message), without the UTF-8 check of
    /// [`GroupRef::key`].
    fn key_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Short { len, bytes } => Some(&bytes[..*len as usize]),
            Repr::Key(k) => Some(k.as_str().as_bytes()),
            Repr::Solo(_) => None,
        }
    }

    /// The stored form: a tag byte, then the key's UTF-8 or the id big-endian.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut v);
        v
    }

    /// Bytes [`GroupRef::encode`] writes.
    pub(crate) fn encoded_len(&self) -> usize {
        self.key_bytes().map_or(9, |k| 1 + k.len())
    }

    /// [`GroupRef::encode`] appended to `out`: an enqueue encodes all its messages' groups
    /// into one buffer, not an allocation each.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match (self.key_bytes(), &self.0) {
            (Some(k), _) => {
                out.push(TAG_KEY);
                out.extend_from_slice(k);
            }
            (None, Repr::Solo(id)) => {
                out.push(TAG_SOLO);
                out.extend_from_slice(&id.0.to_be_bytes());
            }
            (None, _) => unreachable!("only an ungrouped message has no key"),
        }
    }

    /// Reads the stored form back; `None` if the bytes are not one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<GroupRef> {
        let (&tag, rest) = bytes.split_first()?;
        match tag {
            TAG_KEY => {
                let s = std::str::from_utf8(rest).ok()?;
                let repr = Repr::short(s).unwrap_or_else(|| Repr::Key(GroupKey(s.to_string())));
                Some(GroupRef(repr))
            }
            TAG_SOLO => {
                let id = u64::from_be_bytes(rest.try_into().ok()?);
                Some(GroupRef(Repr::Solo(MessageId(id))))
            }
            _ => None,
        }
    }
}

impl From<GroupKey> for GroupRef {
    fn from(k: GroupKey) -> Self {
        GroupRef(Repr::keyed(k))
    }
}

impl Ord for GroupRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.key_bytes(), other.key_bytes()) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => self.solo().cmp(&other.solo()),
        }
    }
}

impl PartialOrd for GroupRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key(), self.solo()) {
            (Some(k), _) => f.debug_tuple("GroupRef").field(&k).finish(),
            (None, id) => f.debug_tuple("GroupRef::Solo").field(&id).finish(),
        }
    }
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key(), self.solo()) {
            (Some(k), _) => f.write_str(k),
            (None, Some(id)) => write!(f, "(ungrouped #{id})"),
            (None, None) => unreachable!("a group has a key or an id"),
        }
    }
}

/// A message handed to [`Queue::enqueue`](crate::Queue::enqueue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Its group; `None` delivers it on its own, unordered.
    pub group: Option<GroupKey>,
    /// The bytes to deliver (the producer's JSON); shared, not copied, into the cache.
    pub payload: Bytes,
    /// The producer's key for this message (`metadata.idempotency_key`): with
    /// [`Queue::enqueue_idempotent`](crate::Queue::enqueue_idempotent), a message whose key
    /// was accepted for the sink within the window is not stored again (the original id is
    /// returned), so a producer's retry cannot create a duplicate. Ignored by
    /// [`Queue::enqueue`](crate::Queue::enqueue).
    pub idempotency_key: Option<String>,
}

impl NewMessage {
    /// A message of `group` (or ungrouped) with these bytes.
    pub fn new(group: Option<GroupKey>, payload: impl Into<Bytes>) -> NewMessage {
        NewMessage {
            group,
            payload: payload.into(),
            idempotency_key: None,
        }
    }

    /// The same message with a producer's idempotency key (see
    /// [`NewMessage::idempotency_key`]).
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> NewMessage {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// How far a producer outside the queue (e.g. a Postgres replication slot) has stored, written
/// by [`Queue::enqueue_at`](crate::Queue::enqueue_at) atomically with the messages it covers,
/// so the producer can resume after a crash without storing anything twice. The value is the
/// producer's own encoding; the queue never interprets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition<'a> {
    /// The producer's name (unique per sink).
    pub source: &'a str,
    /// The position, opaque to the queue.
    pub value: &'a [u8],
}

/// The idempotency of one [`Queue::enqueue_idempotent`](crate::Queue::enqueue_idempotent)
/// call: the request's own key (if any), and how long the keys it accepts are remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key of the whole request (the HTTP `Idempotency-Key` header).
    pub request: Option<RequestKey>,
    /// Keys accepted by this call are duplicates for this long. Records already stored keep
    /// the expiry they were stored with (a changed window applies to new keys).
    pub window: Duration,
}

impl Idempotency {
    /// Message keys only, remembered for `window`.
    pub fn messages(window: Duration) -> Idempotency {
        Idempotency {
            request: None,
            window,
        }
    }
}

/// A request's idempotency key and a fingerprint of what the request asked for: a repeat with
/// the same fingerprint is a retry (replayed), with another fingerprint a conflict
/// ([`QueueError::IdempotencyConflict`](crate::QueueError::IdempotencyConflict)): the key was
/// reused for a different request, and answering with the old ids would hide that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub key: String,
    /// Any stable 128-bit digest of the request (the server hashes body and parameters).
    pub fingerprint: u128,
}

/// One message's answer from [`Queue::enqueue_idempotent`](crate::Queue::enqueue_idempotent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Its id: new, or the id of the message first accepted with its key.
    pub id: MessageId,
    /// Its key was accepted before (within the window, or earlier in the same call): nothing
    /// was stored for it.
    pub duplicate: bool,
}

/// What [`Queue::enqueue_idempotent`](crate::Queue::enqueue_idempotent) returns once the
/// messages (and every record the answer depends on) are durable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnqueueOutcome {
    /// Per message of the call, in order.
    pub accepted: Vec<Accepted>,
    /// The messages this call stored, with their groups (the groups to wake).
    pub stored: Vec<Enqueued>,
    /// The request key was accepted before with the same fingerprint: nothing was stored and
    /// `accepted` is the original answer.
    pub replayed: bool,
}

impl EnqueueOutcome {
    /// How many messages were duplicates.
    pub fn duplicates(&self) -> usize {
        self.accepted.iter().filter(|a| a.duplicate).count()
    }
}

/// What [`Queue::enqueue`](crate::Queue::enqueue) returns per message, once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: MessageId,
    pub group: GroupRef,
}

/// Delivery bookkeeping of one message: what the console shows and the backoff reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// Failed attempts so far (a successful attempt removes the message).
    pub deliver_count: u32,
    /// The last failure, with S2's answer.
    pub last_error: Option<LastError>,
    /// Not to be attempted before this time (backoff); `None` = ready.
    pub not_visible_until: Option<UnixMillis>,
    /// When the last attempt failed.
    pub last_attempt_at: Option<UnixMillis>,
}

/// A message as stored, with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    /// The epoch of the queue that accepted it (see [`DeliveryId`]).
    pub epoch: u64,
    pub group: GroupRef,
    pub payload: Bytes,
    pub enqueued_at: UnixMillis,
    pub state: DeliveryState,
}

impl StoredMessage {
    /// The id its S2 record carries.
    pub fn delivery_id(&self) -> DeliveryId {
        DeliveryId {
            epoch: self.epoch,
            id: self.id,
        }
    }
}

/// A discarded message kept for inspection, with its last error in `message.state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardedMessage {
    pub message: StoredMessage,
    pub discarded_at: UnixMillis,
    /// Position in the sink's discarded list (grows with every discard): the paging cursor.
    pub seq: u64,
}

/// Which messages a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    /// Never attempted and failed (`deliver_count == 0`).
    Pending,
    /// Waiting for a backoff to end (`not_visible_until > now`).
    BackingOff,
    /// Failed at least once (`deliver_count > 0`).
    Failed,
    /// Everything.
    #[default]
    All,
}

impl StateFilter {
    /// Whether a message in `state` matches at time `now`.
    pub fn matches(self, state: &DeliveryState, now: UnixMillis) -> bool {
        match self {
            StateFilter::Pending => state.deliver_count == 0,
            StateFilter::BackingOff => state.not_visible_until.is_some_and(|t| t > now),
            StateFilter::Failed => state.deliver_count > 0,
            StateFilter::All => true,
        }
    }
}

/// A page request for [`Queue::list`](crate::Queue::list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub state: StateFilter,
    /// Only this group (in group order, which is id order).
    pub group: Option<GroupRef>,
    /// Exclusive cursor in the listing direction: ids after it (or before it, newest first).
    pub after: Option<MessageId>,
    /// At most this many messages.
    pub limit: usize,
    /// Newest (highest id) first.
    pub newest_first: bool,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            state: StateFilter::All,
            group: None,
            after: None,
            limit: 100,
            newest_first: false,
        }
    }
}

/// Per-sink counters, kept exact without scanning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages in the queue, whatever their state.
    pub pending: u64,
    /// Messages in the queue that failed at least once (`deliver_count > 0`).
    pub failing: u64,
    /// Messages removed as delivered (acked or manually acknowledged), ever.
    pub delivered: u64,
    /// Messages discarded, ever (the discarded list keeps only the newest).
    pub discarded: u64,
}

/// Settings of [`Queue::open_with`](crate::Queue::open_with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// How many discarded messages each sink keeps (oldest dropped first).
    pub discarded_cap: usize,
    /// sled's page cache size in bytes. Delivery reads payloads from the queue's own cache,
    /// so sled's cache mostly serves misses and listings.
    pub cache_capacity: u64,
    /// Bytes of pending payloads kept in memory so delivery never reads sled on the hot path.
    /// Past it, new payloads are read back from their chunk when their group gets to them
    /// (one read per chunk). Memory stays bounded by this whatever the backlog.
    pub payload_cache_bytes: usize,
    /// Extra wait before each group-commit flush, to gather more writers into one fsync.
    /// Zero by default; tests use it to widen the window between apply and flush.
    pub commit_delay: Duration,
    /// Idempotency records each sink keeps at most (request and message keys together); past
    /// it the oldest are forgotten first, even within their window, so memory stays bounded:
    /// about 270 bytes per key of 19 bytes (measured RSS, sled included), so ≈ 270 MB per
    /// sink at the default of 1,000,000.
    pub idempotency_max_keys: usize,
    /// Payload bytes of chunk bodies per span tree (see the crate's storage notes): a span is
    /// dropped whole once all its chunks ended. Smaller spans give memory and disk back
    /// sooner; larger ones mean fewer sled trees. Only affects spans started after the open.
    pub span_bytes: u64,
    /// Keep each sink's payload cache filled with its oldest chunk bodies from a background
    /// thread, read whole and in id order (see the crate's storage notes). On by default;
    /// off, delivery reads what it misses itself.
    pub read_ahead: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            discarded_cap: 1000,
            cache_capacity: 64 * 1024 * 1024,
            payload_cache_bytes: 64 * 1024 * 1024,
            commit_delay: Duration::ZERO,
            idempotency_max_keys: 1_000_000,
            span_bytes: 16 << 20,
            read_ahead: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_handles_of_short_and_long_keys_compare_hash_and_store_as_their_text() {
        use std::hash::{BuildHasher, RandomState};
        let short = "public.orders/12345678"; // 22 bytes: held in place
        let long = "public.orders/123456789"; // 23 bytes: on the heap
        assert_eq!((short.len(), long.len()), (SHORT_KEY, SHORT_KEY + 1));
        let texts = [
            "",
            "a",
            "public.orders/7",
            short,
            long,
            "ü/é",
            &"x".repeat(300),
        ];
        let hasher = RandomState::new();
        for text in texts {
            let a = GroupRef::from(GroupKey(text.to_string()));
            let b = GroupRef::of(Some(GroupKey(text.to_string())), MessageId(9));
            let c = GroupRef::decode(&a.encode()).expect("decodes");
            assert_eq!(a.key(), Some(text));
            assert_eq!(a.to_string(), text);
            assert_eq!(a.encoded_len(), a.encode().len());
            assert_eq!(a.encode()[1..], *text.as_bytes());
            for other in [&b, &c] {
                assert_eq!(&a, other);
                assert_eq!(a.cmp(other), std::cmp::Ordering::Equal);
                assert_eq!(hasher.hash_one(&a), hasher.hash_one(other));
            }
        }
        // Ordered by key text whatever the representation, keyed before ungrouped.
        let mut groups: Vec<GroupRef> = texts
            .iter()
            .map(|t| GroupRef::from(GroupKey(t.to_string())))
            .chain([MessageId(2), MessageId(1)].map(|id| GroupRef::of(None, id)))
            .collect();
        groups.sort();
        let mut want: Vec<&str> = texts.to_vec();
        want.sort();
        let keys: Vec<Option<&str>> = groups.iter().map(GroupRef::key).collect();
        let want: Vec<Option<&str>> = want.into_iter().map(Some).chain([None, None]).collect();
        assert_eq!(keys, want);
        assert_eq!(groups[groups.len() - 2].solo(), Some(MessageId(1)));
        assert_eq!(
            GroupRef::of(None, MessageId(5)).to_string(),
            "(ungrouped #5)"
        );
        assert_ne!(
            GroupRef::from(GroupKey(short.into())),
            GroupRef::from(GroupKey(long.into()))
        );
    }

    #[test]
    fn a_delivery_id_prints_as_its_header_form_and_parses_back() {
        let ids = [0, 1, 9, 10, 12_345, u64::from(u32::MAX), u64::MAX];
        let epochs = [0, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX];
        for epoch in epochs {
            for id in ids {
                let d = DeliveryId {
                    epoch,
                    id: MessageId(id),
                };
                let expected = if epoch == 0 {
                    format!("{id}")
                } else {
                    format!("{epoch:016x}-{id}")
                };
                assert_eq!(d.to_string(), expected);
                assert_eq!(DeliveryId::parse(&expected), Some(d));
            }
        }
    }
}
