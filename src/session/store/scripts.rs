//! The Redis backend's Lua scripts (`scripts/*.lua`), each behind the prelude that gives it the
//! invalidation message format (see [`crate::session::invalidation::lua_prelude`]).
use std::sync::LazyLock;

use redis::Script;

use crate::session::invalidation::lua_prelude;

static PRELUDE: LazyLock<String> = LazyLock::new(lua_prelude);

fn load(body: &str) -> Script {
    crate::redis::script(&[&PRELUDE, body])
}

/// The sealed grant of every session of a user still in Redis: `sid, roles, permissions,
/// expires_at, grant_mac` per session, flat. Rust checks each seal before re-sealing.
pub(super) static READ_GRANTS: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/read_grants.lua")));

/// Rewrites the roles, permissions and grant MAC (computed in Rust per session; ARGV[6..] are
/// sid, MAC pairs) of the sessions that still exist, and announces the change.
pub(super) static SET_ACCESS: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/set_access.lua")));

/// Replaces the authentication fields and their MAC (computed in Rust) of an existing session,
/// and has every pod read the user's sessions again (an `a:` message).
pub(super) static REAUTHENTICATE: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/reauthenticate.lua")));

pub(super) static TOUCH: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/touch.lua")));

/// Deletes one session; only a session that existed is announced, so naming someone else's
/// session id cannot evict it anywhere.
pub(super) static REVOKE: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/revoke.lua")));

pub(super) static REVOKE_ALL: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/revoke_all.lua")));

/// One rotation step. The presented token is rotated only if it is the current one and the
/// record's token MAC is the one Rust computed for it (ARGV[10], or ARGV[11] under the previous
/// key): a refresh_hash written by someone else is deleted and announced instead ('unsealed'),
/// so a forged hash never turns into a properly sealed successor. The new token and rotation
/// MACs (ARGV[12], ARGV[13]) come from Rust, which knows the whole new state. The grant (and,
/// when replayed, the rotation state) comes back with its MAC for Rust to verify before
/// anything is handed out.
pub(super) static ROTATE: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/rotate.lua")));

/// Sets the cut-off marker and revokes every session of the user, atomically; announces the
/// revoked sessions and the user (so in-flight reads of any of its sessions are not cached).
pub(super) static CUT_OFF: LazyLock<Script> =
    LazyLock::new(|| load(include_str!("scripts/cut_off.lua")));

/// The last step of the create transaction (EVAL inside MULTI, so it is atomic with the HSET
/// before it; EVAL and not EVALSHA, since a NOSCRIPT inside MULTI would not undo the rest): the
/// source itself, not a [`Script`]. Undoes the creation if the account is cut off; otherwise
/// ends the oldest sessions beyond the cap (ARGV[3], 0 = none): oldest by created_at, then by id
/// (v7 ids sort by creation).
pub(super) static CREATE_GUARD: LazyLock<String> =
    LazyLock::new(|| format!("{}{}", *PRELUDE, include_str!("scripts/create_guard.lua")));
