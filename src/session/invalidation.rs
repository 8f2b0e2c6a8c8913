//! The messages on `{prefix}invalidate`, defined here once: Rust encodes and decodes them, and
//! the Redis scripts that publish them get their format from [`lua_prelude`].
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
}
