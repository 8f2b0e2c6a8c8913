//! Disabling or deleting an account while its owner logs in and refreshes, with Redis or the
//! database failing at any step.
//!
//! Property `no usable session once answered`: once the admin operation has answered anything
//! (204 or 503) and the database says the account is disabled or deleted, no session of the
//! account is both live in Redis and held by a client, and no refresh succeeds.
use stateright::{Model, Property};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Safeguards {
    /// `admin::set_disabled` / `delete_user`: the per-user marker and the revocation of every
    /// session, one Redis script, BEFORE the database change. Off: the database first, then a
    /// revocation without a marker (the order before issue 13).
    pub marker_first: bool,
    /// The create (login) and ROTATE scripts refuse a user with the marker.
    pub scripts_check_marker: bool,
}

impl Safeguards {
    pub const AS_BUILT: Safeguards = Safeguards {
        marker_first: true,
        scripts_check_marker: true,
    };
}

#[derive(Clone, Debug)]
pub struct Account {
    pub safeguards: Safeguards,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Admin {
    Start,
    /// The first step has been done (which one depends on `marker_first`).
    FirstDone,
    /// Answered 204 or 503.
    Answered,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Login {
    Idle,
    /// The login (`app::accounts::login`) found the account enabled and the password right.
    Checked,
    /// `CreateSession` stored session 1.
    Created,
    /// Answered with tokens for session 1 (`true`) or refused / 503 (`false`).
    Answered(bool),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    /// The database says disabled (or deleted).
    pub disabled: bool,
    /// Redis: the per-user marker, and which of sessions 0 and 1 exist.
    pub marker: bool,
    pub live: [bool; 2],
    /// The client holds tokens of session 0 (from an earlier login) and maybe session 1.
    pub held: [bool; 2],
    pub admin: Admin,
    pub login: Login,
    /// Ghost: a refresh succeeded after the operation answered with the account disabled.
    pub late_refresh: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The admin operation's next step succeeds.
    AdminStep,
    /// The admin operation's next step fails (Redis or database unreachable): it answers 503.
    AdminFails,
    LoginStep,
    /// The login's Redis or database call fails: 503, no tokens.
    LoginFails,
    /// POST /token/refresh with a held session's token (`RedisStore::rotate`).
    Refresh {
        session: usize,
    },
}

impl Account {
    fn revoke_all(s: &mut State) {
        s.live = [false, false];
    }
}

impl Model for Account {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            disabled: false,
            marker: false,
            live: [true, false],
            held: [true, false],
            admin: Admin::Start,
            login: Login::Idle,
            late_refresh: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.admin != Admin::Answered {
            actions.push(Action::AdminStep);
            actions.push(Action::AdminFails);
        }
        if !matches!(s.login, Login::Answered(_)) {
            actions.push(Action::LoginStep);
            if s.login != Login::Idle {
                actions.push(Action::LoginFails);
            }
        }
        for session in 0..2 {
            if s.held[session] && s.live[session] {
                actions.push(Action::Refresh { session });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let g = self.safeguards;
        match action {
            Action::AdminStep => match (s.admin, g.marker_first) {
                (Admin::Start, true) => {
                    s.marker = true;
                    Self::revoke_all(&mut s);
                    s.admin = Admin::FirstDone;
                }
                (Admin::Start, false) => {
                    s.disabled = true;
                    s.admin = Admin::FirstDone;
                }
                (Admin::FirstDone, true) => {
                    s.disabled = true;
                    s.admin = Admin::Answered;
                }
                (Admin::FirstDone, false) => {
                    Self::revoke_all(&mut s);
                    s.admin = Admin::Answered;
                }
                (Admin::Answered, _) => return None,
            },
            Action::AdminFails => s.admin = Admin::Answered,
            Action::LoginStep => match s.login {
                Login::Idle => {
                    s.login = if s.disabled {
                        Login::Answered(false)
                    } else {
                        Login::Checked
                    };
                }
                Login::Checked => {
                    if g.scripts_check_marker && s.marker {
                        s.login = Login::Answered(false);
                    } else {
                        s.live[1] = true;
                        s.login = Login::Created;
                    }
                }
                // The login looks at the account again once the session exists.
                Login::Created => {
                    if s.disabled {
                        s.live[1] = false;
                        s.login = Login::Answered(false);
                    } else {
                        s.held[1] = true;
                        s.login = Login::Answered(true);
                    }
                }
                Login::Answered(_) => return None,
            },
            Action::LoginFails => s.login = Login::Answered(false),
            Action::Refresh { .. } => {
                let refused = g.scripts_check_marker && s.marker;
                if !refused && s.admin == Admin::Answered && s.disabled {
                    s.late_refresh = true;
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no usable session once answered", |_: &Self, s: &State| {
                let cut_off = s.admin == Admin::Answered && s.disabled;
                let usable = (0..2).any(|i| s.live[i] && s.held[i]);
                !(s.late_refresh || cut_off && usable)
            }),
            Property::sometimes("a login races the operation", |_: &Self, s: &State| {
                s.login == Login::Created && s.admin == Admin::FirstDone
            }),
        ]
    }
}
