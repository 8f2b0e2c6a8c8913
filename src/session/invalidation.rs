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

const SESSIONS: &str = "s";
const USER: &str = "u";
const ACCESS: &str = "a";
/// Ends the kind tag.
const TAG_END: &str = ":";
/// Between the ids of [`Invalidation::Sessions`].
const ID_SEP: &str = ",";

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

    pub fn decode(payload: &[u8]) -> Option<Self> {
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
}

/// Prepended to every session script: `sessions_message(ids[, from])` builds the
/// [`Invalidation::Sessions`] message of `ids` (from index `from`, default 1), in the format
/// [`Invalidation::decode`] reads.
pub fn lua_prelude() -> String {
    format!(
        "local function sessions_message(ids, from)\n  return {} .. table.concat(ids, {}, from or 1)\nend\n",
        lua_string(&format!("{SESSIONS}{TAG_END}")),
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
    fn lua_literals_escape_every_byte() {
        assert_eq!(lua_string("s:"), r"'\115\058'");
        assert!(lua_prelude().contains(r"table.concat(ids, '\044', from or 1)"));
    }
}
