//! The messages on `{prefix}invalidate`, defined here once: Rust encodes and decodes them, and
//! the Redis scripts that publish them get their format from [`lua_prelude`].
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use uuid::Uuid;

/// `s:<sid>[,<sid>...]` for revoked sessions, `u:<uid>` for all sessions of a user, `a:<uid>`
/// when a user's roles changed (cached sessions of the user are re-read from the store, not
/// ended). Plain text keeps the subscriber's parse trivial and the channel readable with
/// redis-cli.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    Sessions(Vec<Uuid>),
    User(Uuid),
    Access(Uuid),
}

/// A message as received: what to invalidate and, if the publisher stamped it, when it was
/// published (microseconds since the Unix epoch, by the Redis server's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub invalidation: Invalidation,
    pub published_at_micros: Option<u64>,
}

const SESSIONS: &str = "s";
const USER: &str = "u";
const ACCESS: &str = "a";
/// Ends the kind tag.
const TAG_END: &str = ":";
/// Between the ids of [`Invalidation::Sessions`].
const ID_SEP: &str = ",";
/// The publish time of an `s:` message travels as one more id at its end,
/// `00000000-0000-0000-HHHH-HHHHHHHHHHHH` (the 16 hex digits: microseconds since the epoch), so
/// a pod of an older version, which reads every id as a session, still applies the message (and
/// ends a session that cannot exist: version nibble 0, while session ids are v7). Any other
/// addition would make the old parser drop the whole revocation during a rolling upgrade. `u:`
/// and `a:` hold a single id, which the old parser reads whole, so they carry no time.
const STAMP_PREFIX: &str = "00000000-0000-0000-";
/// Hex digits of the stamp before its last hyphen.
const STAMP_SPLIT: usize = 4;

impl Invalidation {
    pub fn session(sid: Uuid) -> Self {
        Invalidation::Sessions(vec![sid])
    }

    pub fn encode(&self) -> String {
        match self {
            Invalidation::Sessions(sids) => {
                let ids: Vec<String> = sids.iter().map(Uuid::to_string).collect();
                format!("{SESSIONS}{TAG_END}{}", ids.join(ID_SEP))
            }
            Invalidation::User(uid) => format!("{USER}{TAG_END}{uid}"),
            Invalidation::Access(uid) => format!("{ACCESS}{TAG_END}{uid}"),
        }
    }

    /// As [`Self::encode`], with the publish time on an `s:` message (the scripts stamp their
    /// own with the Redis clock; this is the same format, for tests and any Rust publisher).
    pub fn encode_stamped(&self, published_at_micros: u64) -> String {
        match self {
            Invalidation::Sessions(_) => {
                let hex = format!("{published_at_micros:016x}");
                let (a, b) = hex.split_at(STAMP_SPLIT);
                format!("{}{ID_SEP}{STAMP_PREFIX}{a}-{b}", self.encode())
            }
            _ => self.encode(),
        }
    }

    /// The invalidation of a message, stamped or not.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        Received::decode(payload).map(|r| r.invalidation)
    }
}

impl Received {
    pub fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, ids) = text.split_once(TAG_END)?;
        let single = |ids: &str| Uuid::parse_str(ids).ok();
        let (invalidation, published_at_micros) = match kind {
            SESSIONS => {
                let (ids, stamp) = match ids.rsplit_once(ID_SEP) {
                    Some((ids, last)) if last.starts_with(STAMP_PREFIX) => {
                        (ids, Some(parse_stamp(&last[STAMP_PREFIX.len()..])?))
                    }
                    _ => (ids, None),
                };
                let sids = ids.split(ID_SEP).map(single).collect::<Option<Vec<_>>>()?;
                (Invalidation::Sessions(sids), stamp)
            }
            USER => (Invalidation::User(single(ids)?), None),
            ACCESS => (Invalidation::Access(single(ids)?), None),
            _ => return None,
        };
        Some(Received {
            invalidation,
            published_at_micros,
        })
    }
}

/// `HHHH-HHHHHHHHHHHH` → microseconds.
fn parse_stamp(text: &str) -> Option<u64> {
    let (a, b) = text.split_once('-')?;
    if a.len() != STAMP_SPLIT || a.len() + b.len() != 16 {
        return None;
    }
    u64::from_str_radix(&format!("{a}{b}"), 16).ok()
}

/// Prepended to every session script: `sessions_message(ids[, from])` builds the
/// [`Invalidation::Sessions`] message of `ids` (from index `from`, default 1), stamped with the
/// Redis server's `TIME`, in the format [`Received::decode`] reads. (Redis 7 replicates a
/// script's effects, not the script, so TIME is allowed before and after writes.)
pub fn lua_prelude() -> String {
    format!(
        "local function sessions_message(ids, from)\n  \
         local t = redis.call('TIME')\n  \
         local hex = string.format('%016x', tonumber(t[1]) * 1000000 + tonumber(t[2]))\n  \
         local stamp = {} .. string.sub(hex, 1, {STAMP_SPLIT}) .. '-' .. string.sub(hex, {})\n  \
         return {} .. table.concat(ids, {}, from or 1) .. {} .. stamp\nend\n",
        lua_string(STAMP_PREFIX),
        STAMP_SPLIT + 1,
        lua_string(&format!("{SESSIONS}{TAG_END}")),
        lua_string(ID_SEP),
        lua_string(ID_SEP),
    )
}

/// A Lua string literal of `s`, every byte escaped (`\ddd`), so no character of it can end the
/// literal.
fn lua_string(s: &str) -> String {
    let escaped: String = s.bytes().map(|b| format!("\\{b:03}")).collect();
    format!("'{escaped}'")
}

/// With several subscription links (one per cluster master), every message arrives once per
/// link: the first copy counts, the later ones are dropped. Each link delivers every message
/// once and in order, so a copy from link `L` is a later copy exactly when an earlier copy of the
/// same payload still waits for `L`. Copies that never come (a link that died, or one that joined
/// after the message) are forgotten after [`FirstCopies::WINDOW`]; pairing a copy with such a
/// message at worst lets a message count at its second copy instead of its first, never drops
/// it, since the links that were up all along still deliver it.
#[derive(Default)]
pub struct FirstCopies {
    links: usize,
    /// Per payload, the messages that still wait for copies, oldest first.
    waiting: HashMap<Vec<u8>, VecDeque<Waiting>>,
    /// Every message by first arrival, to forget it after the window.
    arrivals: VecDeque<(Instant, u64, Vec<u8>)>,
    next_id: u64,
}

struct Waiting {
    id: u64,
    /// The links that delivered it so far.
    seen: Vec<u64>,
}

impl FirstCopies {
    /// How long the later copies of a message are waited for (the cluster bus delivers them
    /// within milliseconds).
    pub const WINDOW: Duration = Duration::from_secs(2);

    /// Forgets everything: `links` links deliver from now on.
    pub fn reset(&mut self, links: usize) {
        *self = Self {
            links,
            ..Self::default()
        };
    }

    /// One more link delivers from now on.
    pub fn add_link(&mut self) {
        self.links += 1;
    }

    /// `link` delivers no more: its copies are no longer waited for.
    pub fn remove_link(&mut self, link: u64) {
        self.links = self.links.saturating_sub(1);
        let links = self.links;
        self.waiting.retain(|_, queue| {
            for waiting in queue.iter_mut() {
                waiting.seen.retain(|l| *l != link);
            }
            // Complete now, or still waiting for the others (also when its only copy so far
            // came from `link`: theirs are not counted again).
            queue.retain(|w| w.seen.len() < links);
            !queue.is_empty()
        });
    }

    /// Whether this copy of `payload`, from `link` at `now`, is the first of its message.
    pub fn first(&mut self, link: u64, payload: &[u8], now: Instant) -> bool {
        self.forget_before(now);
        if self.links <= 1 {
            return true;
        }
        if let Some(queue) = self.waiting.get_mut(payload) {
            if let Some(i) = queue.iter().position(|w| !w.seen.contains(&link)) {
                queue[i].seen.push(link);
                if queue[i].seen.len() >= self.links {
                    queue.remove(i);
                    if queue.is_empty() {
                        self.waiting.remove(payload);
                    }
                }
                return false;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting
            .entry(payload.to_vec())
            .or_default()
            .push_back(Waiting {
                id,
                seen: vec![link],
            });
        self.arrivals.push_back((now, id, payload.to_vec()));
        true
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some((at, id, _)) = self.arrivals.front() {
            if now.saturating_duration_since(*at) < Self::WINDOW {
                break;
            }
            let id = *id;
            let Some((_, _, payload)) = self.arrivals.pop_front() else {
                break;
            };
            if let Some(queue) = self.waiting.get_mut(&payload) {
                // Older messages of this payload were forgotten before (or completed).
                if queue.front().is_some_and(|w| w.id == id) {
                    queue.pop_front();
                }
                if queue.is_empty() {
                    self.waiting.remove(&payload);
                }
            }
        }
    }

    /// Messages still waiting for copies (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip_and_garbage_is_ignored() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for inv in [
            Invalidation::session(a),
            Invalidation::Sessions(vec![a, b]),
            Invalidation::User(a),
            Invalidation::Access(b),
        ] {
            assert_eq!(Invalidation::decode(inv.encode().as_bytes()), Some(inv));
        }
        assert_eq!(Invalidation::decode(b"x:1"), None);
        assert_eq!(Invalidation::decode(b"s:not-a-uuid"), None);
        assert_eq!(Invalidation::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn stamped_messages_round_trip() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let at = 1_790_000_000_123_456;
        for inv in [Invalidation::session(a), Invalidation::Sessions(vec![a, b])] {
            let got = Received::decode(inv.encode_stamped(at).as_bytes());
            assert_eq!(
                got,
                Some(Received {
                    invalidation: inv,
                    published_at_micros: Some(at)
                })
            );
        }
        let user = Invalidation::User(a);
        assert_eq!(user.encode_stamped(at), user.encode());
        let plain = Received::decode(Invalidation::session(a).encode().as_bytes());
        assert_eq!(plain.and_then(|r| r.published_at_micros), None);
        let bad_stamp = format!("s:{a},{STAMP_PREFIX}zzzz-000000000000");
        assert_eq!(Received::decode(bad_stamp.as_bytes()), None);
    }

    /// The decoder of the versions before the stamp, verbatim: during a rolling upgrade the old
    /// pods must still act on a stamped revocation (every real id among what they revoke).
    fn decode_before_stamps(payload: &[u8]) -> Option<Invalidation> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, ids) = text.split_once(TAG_END)?;
        match kind {
            SESSIONS => ids
                .split(ID_SEP)
                .map(|id| Uuid::parse_str(id).ok())
                .collect::<Option<Vec<_>>>()
                .map(Invalidation::Sessions),
            USER => Uuid::parse_str(ids).ok().map(Invalidation::User),
            ACCESS => Uuid::parse_str(ids).ok().map(Invalidation::Access),
            _ => None,
        }
    }

    #[test]
    fn pods_of_the_previous_version_still_act_on_stamped_messages() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let stamped = Invalidation::Sessions(vec![a, b]).encode_stamped(u64::MAX);
        let Some(Invalidation::Sessions(old)) = decode_before_stamps(stamped.as_bytes()) else {
            panic!("the old parser drops {stamped}");
        };
        assert_eq!(&old[..2], &[a, b]);
        // The extra "session" it ends is not one a session id can be (v7, never version 0).
        assert_eq!(old[2].get_version_num(), 0);
        assert_eq!(a.get_version_num(), 7);
    }

    #[test]
    fn lua_literals_escape_every_byte() {
        assert_eq!(lua_string("s:"), r"'\115\058'");
        assert!(lua_prelude().contains(r"table.concat(ids, '\044', from or 1)"));
    }

    #[test]
    fn only_the_first_copy_of_each_message_counts() {
        let t = Instant::now();
        let mut copies = FirstCopies::default();
        // One link: everything counts, even a repeated payload.
        copies.reset(1);
        assert!(copies.first(0, b"a:1", t));
        assert!(copies.first(0, b"a:1", t));

        copies.reset(3);
        // Two messages with the same payload (a role changed twice), interleaved on 3 links.
        assert!(copies.first(1, b"a:1", t));
        assert!(!copies.first(2, b"a:1", t));
        assert!(copies.first(1, b"a:1", t), "the second message, first copy");
        assert!(!copies.first(3, b"a:1", t));
        assert!(!copies.first(2, b"a:1", t));
        assert!(!copies.first(3, b"a:1", t));
        assert_eq!(copies.waiting(), 0, "complete messages are not kept");
        assert!(copies.first(3, b"s:x", t));

        // A link that died: its copies never come, and the message is forgotten after the window.
        copies.reset(3);
        assert!(copies.first(1, b"u:1", t));
        assert!(!copies.first(2, b"u:1", t));
        assert_eq!(copies.waiting(), 1);
        let later = t + FirstCopies::WINDOW;
        assert!(
            copies.first(1, b"u:1", later),
            "a new message after the window"
        );
        assert_eq!(copies.waiting(), 1);
        // A link that joined after a message: its copy of the next one is paired with the old
        // one, and the next one counts at the copy of a link that was up all along.
        copies.reset(2);
        assert!(copies.first(1, b"a:2", t));
        copies.add_link();
        assert!(!copies.first(9, b"a:2", t));
        assert!(copies.first(1, b"a:2", t));
    }

    #[test]
    fn a_dropped_link_is_no_longer_waited_for() {
        let t = Instant::now();
        let mut copies = FirstCopies::default();
        copies.reset(3);
        // Seen on links 1 and 2; link 3 is dropped before its copy: the message is complete.
        assert!(copies.first(1, b"s:a", t));
        assert!(!copies.first(2, b"s:a", t));
        // Seen only on the link that is dropped: the others' copies are still later copies.
        assert!(copies.first(3, b"s:b", t));
        copies.remove_link(3);
        assert_eq!(copies.waiting(), 1);
        assert!(!copies.first(1, b"s:b", t));
        assert!(!copies.first(2, b"s:b", t));
        assert_eq!(copies.waiting(), 0);
        // Two links left: each message counts once.
        assert!(copies.first(2, b"s:a", t));
        assert!(!copies.first(1, b"s:a", t));
        assert_eq!(copies.waiting(), 0);
    }
}
