//! The in-process backend: sessions in this process, for the embedded single-node default.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moka::{future::Cache, Expiry};
use uuid::Uuid;

use crate::domain::Access;

use super::super::{
    now_unix, AuthContext, Created, Lifetimes, RefreshToken, Rotation, SessionRecord, SessionState,
};

/// One in-process session with its rotation state.
struct MemSession {
    rec: SessionRecord,
    prev_hash: Option<String>,
    rotated_at: i64,
    sealed_successor: String,
    jti: Uuid,
    used: HashSet<String>,
}

/// Entries expire at the session's absolute end; idle ones are dropped when next looked at.
#[derive(Clone)]
pub struct MemoryStore {
    sessions: Cache<Uuid, Arc<Mutex<MemSession>>>,
    by_user: Arc<Mutex<HashMap<Uuid, HashSet<Uuid>>>>,
    /// Cut-off accounts and until when (unix seconds). Held across a create and across a
    /// cut-off, so the two are atomic with respect to each other (as the scripts are in Redis).
    cut_offs: Arc<tokio::sync::Mutex<HashMap<Uuid, i64>>>,
    pub(super) lifetimes: Lifetimes,
}

struct UntilSessionEnd;

impl Expiry<Uuid, Arc<Mutex<MemSession>>> for UntilSessionEnd {
    fn expire_after_create(
        &self,
        _: &Uuid,
        s: &Arc<Mutex<MemSession>>,
        _: Instant,
    ) -> Option<Duration> {
        let expires_at = s.lock().map_or(0, |s| s.rec.expires_at);
        Some(Duration::from_secs((expires_at - now_unix()).max(0) as u64))
    }
}

impl MemoryStore {
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self {
            sessions: Cache::builder().expire_after(UntilSessionEnd).build(),
            by_user: Arc::default(),
            cut_offs: Arc::default(),
            lifetimes,
        }
    }

    fn marked(cut_offs: &HashMap<Uuid, i64>, uid: Uuid) -> bool {
        cut_offs.get(&uid).is_some_and(|until| *until > now_unix())
    }

    /// The user's live session, dropping it if it has ended.
    async fn live(&self, uid: Uuid, sid: Uuid) -> Option<Arc<Mutex<MemSession>>> {
        let entry = self.sessions.get(&sid).await?;
        let live = entry.lock().ok().is_some_and(|s| {
            s.rec.user_id == uid
                && self
                    .lifetimes
                    .is_live(s.rec.expires_at, s.rec.last_seen_at, now_unix())
        });
        if live {
            return Some(entry);
        }
        if entry.lock().is_ok_and(|s| s.rec.user_id == uid) {
            self.remove(uid, sid).await;
        }
        None
    }

    fn user_sids(&self, uid: Uuid) -> Vec<Uuid> {
        self.by_user
            .lock()
            .map(|idx| {
                idx.get(&uid)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    async fn remove(&self, uid: Uuid, sid: Uuid) -> bool {
        if let Ok(mut idx) = self.by_user.lock() {
            if let Some(set) = idx.get_mut(&uid) {
                set.remove(&sid);
                if set.is_empty() {
                    idx.remove(&uid);
                }
            }
        }
        self.sessions.remove(&sid).await.is_some()
    }

    pub(super) async fn create(&self, rec: &SessionRecord) -> Created {
        let cut_offs = self.cut_offs.lock().await;
        if Self::marked(&cut_offs, rec.user_id) {
            return Created::AccountCutOff;
        }
        if let Ok(mut idx) = self.by_user.lock() {
            idx.entry(rec.user_id).or_default().insert(rec.session_id);
        }
        let session = MemSession {
            rec: rec.clone(),
            prev_hash: None,
            rotated_at: 0,
            sealed_successor: String::new(),
            jti: Uuid::nil(),
            used: HashSet::new(),
        };
        self.sessions
            .insert(rec.session_id, Arc::new(Mutex::new(session)))
            .await;
        let mut evicted = Vec::new();
        let max = self.lifetimes.max_sessions;
        if max > 0 {
            let mut others: Vec<(i64, Uuid)> = Vec::new();
            for sid in self.user_sids(rec.user_id) {
                if sid == rec.session_id {
                    continue;
                }
                match self.live(rec.user_id, sid).await {
                    Some(entry) => {
                        if let Ok(s) = entry.lock() {
                            others.push((s.rec.created_at, sid));
                        }
                    }
                    None => {
                        self.remove(rec.user_id, sid).await;
                    }
                }
            }
            // Oldest first: by creation second, then by id (v7 ids sort by creation).
            others.sort();
            let excess = (others.len() + 1).saturating_sub(max);
            for (_, sid) in others.into_iter().take(excess) {
                if self.remove(rec.user_id, sid).await {
                    evicted.push(sid);
                }
            }
        }
        drop(cut_offs);
        Created::Stored { evicted }
    }

    pub(super) async fn cut_off(&self, uid: Uuid) -> Vec<Uuid> {
        let mut cut_offs = self.cut_offs.lock().await;
        let now = now_unix();
        cut_offs.retain(|_, until| *until > now);
        cut_offs.insert(uid, now + self.lifetimes.cut_off_ttl().as_secs() as i64);
        let revoked = self.revoke_all(uid, None).await;
        drop(cut_offs);
        revoked
    }

    pub(super) async fn restore(&self, uid: Uuid) {
        self.cut_offs.lock().await.remove(&uid);
    }

    pub(super) async fn is_cut_off(&self, uid: Uuid) -> bool {
        Self::marked(&*self.cut_offs.lock().await, uid)
    }

    pub(super) async fn load(&self, uid: Uuid, sid: Uuid) -> Option<SessionState> {
        let entry = self.live(uid, sid).await?;
        let s = entry.lock().ok()?;
        Some(SessionState {
            user_id: uid,
            expires_at: s.rec.expires_at,
            last_seen_at: s.rec.last_seen_at,
            access: s.rec.access.clone(),
            auth: s.rec.auth.clone(),
        })
    }

    pub(super) async fn reauthenticate(&self, uid: Uuid, sid: Uuid, auth: &AuthContext) -> bool {
        let Some(entry) = self.live(uid, sid).await else {
            return false;
        };
        let updated = match entry.lock() {
            Ok(mut s) => {
                s.rec.auth = Arc::new(auth.clone());
                true
            }
            Err(_) => false,
        };
        updated
    }

    pub(super) async fn touch(&self, uid: Uuid, sid: Uuid, now: i64) -> bool {
        let Some(entry) = self.live(uid, sid).await else {
            return false;
        };
        let touched = match entry.lock() {
            Ok(mut s) => {
                s.rec.last_seen_at = s.rec.last_seen_at.max(now);
                true
            }
            Err(_) => false,
        };
        touched
    }

    pub(super) async fn revoke(&self, uid: Uuid, sid: Uuid) -> bool {
        match self.sessions.get(&sid).await {
            Some(s) if s.lock().is_ok_and(|s| s.rec.user_id == uid) => self.remove(uid, sid).await,
            _ => false,
        }
    }

    pub(super) async fn revoke_all(&self, uid: Uuid, except: Option<Uuid>) -> Vec<Uuid> {
        let sids = self.user_sids(uid);
        let mut revoked = Vec::new();
        for sid in sids.into_iter().filter(|s| Some(*s) != except) {
            if self.remove(uid, sid).await {
                revoked.push(sid);
            }
        }
        revoked
    }

    pub(super) async fn set_access(&self, uid: Uuid, access: &Access) -> usize {
        let mut n = 0;
        for sid in self.user_sids(uid) {
            if let Some(entry) = self.live(uid, sid).await {
                if let Ok(mut s) = entry.lock() {
                    s.rec.access = Arc::new(access.clone());
                    n += 1;
                }
            }
        }
        n
    }

    pub(super) async fn list(&self, uid: Uuid) -> Vec<SessionRecord> {
        let sids = self.user_sids(uid);
        let mut out = Vec::new();
        for sid in sids {
            if let Some(entry) = self.live(uid, sid).await {
                if let Ok(s) = entry.lock() {
                    out.push(s.rec.clone());
                }
            } else {
                self.remove(uid, sid).await;
            }
        }
        out.sort_by_key(|r| (r.created_at, r.session_id));
        out
    }

    pub(super) async fn rotate(
        &self,
        presented: &RefreshToken,
        successor: &RefreshToken,
        jti: Uuid,
        now: i64,
    ) -> Rotation {
        let (uid, sid) = (presented.user_id, presented.session_id);
        if self.is_cut_off(uid).await {
            return Rotation::Invalid;
        }
        let Some(entry) = self.live(uid, sid).await else {
            return Rotation::Invalid;
        };
        let hash = presented.hash();
        let reused = {
            let Ok(mut s) = entry.lock() else {
                return Rotation::Invalid;
            };
            if s.rec.refresh_hash == hash {
                let previous = std::mem::replace(&mut s.rec.refresh_hash, successor.hash());
                s.used.insert(previous.clone());
                s.prev_hash = Some(previous);
                s.rotated_at = now;
                s.sealed_successor = presented.seal(successor);
                s.jti = jti;
                s.rec.last_seen_at = now;
                return Rotation::Rotated {
                    expires_at: s.rec.expires_at,
                    access: s.rec.access.clone(),
                    auth: s.rec.auth.clone(),
                };
            }
            if s.prev_hash.as_deref() == Some(hash.as_str())
                && now - s.rotated_at <= self.lifetimes.reuse_grace.as_secs() as i64
            {
                return Rotation::Replayed {
                    expires_at: s.rec.expires_at,
                    access: s.rec.access.clone(),
                    auth: s.rec.auth.clone(),
                    rotated_at: s.rotated_at,
                    sealed_successor: s.sealed_successor.clone(),
                    jti: s.jti,
                };
            }
            s.used.contains(&hash)
        };
        if reused {
            self.remove(uid, sid).await;
            Rotation::Reused
        } else {
            Rotation::Invalid
        }
    }
}
