//! Refresh-token rotation: one session whose refresh tokens are presented, concurrently and in
//! any order, by the client and by a thief who holds a copy of every token ever issued.
//!
//! Properties:
//! - `one successor per token`: no refresh token ever has two different successors (a family
//!   never forks into two live lines);
//! - `reuse after the grace revokes`: a rotated-away token presented after the grace window ends
//!   the session, so the thief and the client both lose it;
//! - `grace replay returns the same pair`: within the grace window the just-rotated token gets the
//!   successor already issued, not a new one.
use stateright::{Model, Property};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Safeguards {
    /// `RedisStore::rotate`: check and rotate in one Lua script (ROTATE). Off: read the record,
    /// then write the successor in a second step, as a naive GET-then-SET would.
    pub atomic_rotation: bool,
    /// ROTATE's reuse branch: a used token after the grace deletes the session.
    pub reuse_detection: bool,
}

impl Safeguards {
    pub const AS_BUILT: Safeguards = Safeguards {
        atomic_rotation: true,
        reuse_detection: true,
    };
}

#[derive(Clone, Debug)]
pub struct Rotation {
    /// REFRESH_REUSE_GRACE, in ticks.
    pub grace: u8,
    pub max_time: u8,
    /// Tokens issued at most (the first one at login included).
    pub max_tokens: u8,
    pub safeguards: Safeguards,
}

impl Rotation {
    pub fn ci(safeguards: Safeguards) -> Self {
        Self {
            grace: 1,
            max_time: 4,
            max_tokens: 5,
            safeguards,
        }
    }
}

/// The session hash's rotation fields.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Record {
    pub current: u8,
    pub prev: Option<u8>,
    pub rotated_at: u8,
    /// The successor issued for `prev` (`succ_sealed`).
    pub successor: Option<u8>,
    /// Bit set of rotated-away tokens (the `:used` set).
    pub used: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub now: u8,
    pub record: Option<Record>,
    /// Tokens issued so far: 0 .. issued.
    pub issued: u8,
    /// Ghost: for each token, the bit set of successors ever handed out for it.
    pub successors: Vec<u16>,
    /// Ghost: a used token presented after the grace did not end the session.
    pub reuse_survived: bool,
    /// Ghost: a replay within the grace got a pair other than the one issued.
    pub replay_mismatch: bool,
    /// Non-atomic variant: presentations that have read the record but not written yet.
    pub pending: Vec<(u8, Option<Record>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Tick,
    /// POST /token/refresh with this token (`Refresh` handler → `RedisStore::rotate`).
    Present {
        token: u8,
    },
    /// Non-atomic variant, second half: write what the read decided.
    Write {
        index: usize,
    },
}

impl Rotation {
    /// The ROTATE script's decision on `record` for `token`; returns the new state.
    fn rotate(&self, s: &mut State, token: u8, seen: Option<Record>) {
        let Some(rec) = seen else { return };
        let now = s.now;
        if rec.current == token {
            if s.issued >= self.max_tokens {
                return;
            }
            let next = s.issued;
            s.issued += 1;
            s.successors.push(0);
            s.successors[token as usize] |= 1 << next;
            // Non-atomic: the write lands on whatever the record is now.
            s.record = Some(Record {
                current: next,
                prev: Some(token),
                rotated_at: now,
                successor: Some(next),
                used: s.record.map_or(rec.used, |r| r.used) | (1 << token),
            });
            return;
        }
        if rec.prev == Some(token) && now - rec.rotated_at <= self.grace {
            // The same successor pair again.
            if rec
                .successor
                .is_none_or(|succ| s.successors[token as usize] & (1 << succ) == 0)
            {
                s.replay_mismatch = true;
            }
            return;
        }
        if rec.used & (1 << token) != 0 {
            if self.safeguards.reuse_detection {
                s.record = None;
            } else {
                s.reuse_survived = true;
            }
        }
    }
}

impl Model for Rotation {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            now: 0,
            record: Some(Record {
                current: 0,
                prev: None,
                rotated_at: 0,
                successor: None,
                used: 0,
            }),
            issued: 1,
            successors: vec![0],
            reuse_survived: false,
            replay_mismatch: false,
            pending: Vec::new(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.now < self.max_time {
            actions.push(Action::Tick);
        }
        if s.record.is_some() {
            for token in 0..s.issued {
                if self.safeguards.atomic_rotation || s.pending.len() < 2 {
                    actions.push(Action::Present { token });
                }
            }
        }
        for index in 0..s.pending.len() {
            actions.push(Action::Write { index });
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => s.now += 1,
            Action::Present { token } if self.safeguards.atomic_rotation => {
                let seen = s.record;
                self.rotate(&mut s, token, seen);
            }
            Action::Present { token } => s.pending.push((token, s.record)),
            Action::Write { index } => {
                let (token, seen) = s.pending.remove(index);
                if s.record.is_some() {
                    self.rotate(&mut s, token, seen);
                }
            }
        }
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.now <= self.max_time
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("one successor per token", |_: &Self, s: &State| {
                s.successors.iter().all(|set| set.count_ones() <= 1)
            }),
            Property::always("reuse after the grace revokes", |_: &Self, s: &State| {
                !s.reuse_survived
            }),
            Property::always(
                "grace replay returns the same pair",
                |_: &Self, s: &State| !s.replay_mismatch,
            ),
            Property::sometimes("a reuse ends the session", |_: &Self, s: &State| {
                s.record.is_none()
            }),
            Property::sometimes("a family rotates twice", |_: &Self, s: &State| {
                s.issued >= 3
            }),
        ]
    }
}
