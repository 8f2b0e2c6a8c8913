//! Model-checked descriptions of sessiond's session protocol, explored exhaustively within small
//! bounds by [stateright](https://docs.rs/stateright):
//!
//! - [`revocation`]: pods with their caches and tombstones, Redis, pub/sub that delays or loses
//!   messages, subscriptions that drop and come back, reads in flight during a revocation or a
//!   role change;
//! - [`rotation`]: refresh-token rotation with the reuse grace window and reuse detection, under
//!   concurrent presentations of every token ever issued;
//! - [`account`]: disabling or deleting an account while logins and refreshes race with it and
//!   Redis or the database fails at any step.
//!
//! Each model has a `Safeguards` value: the protocol as `src/` implements it is
//! `Safeguards::AS_BUILT`; turning one safeguard off must let the checker find a counterexample
//! (the mutation tests in `tests/`). Each action's doc names the code in `src/` it stands for.
//!
//! What is assumed, not proven: Redis runs each Lua script atomically; messages on one pub/sub
//! connection arrive in order; pod clocks advance together (one `Tick` for all); a bounded number
//! of steps stands for time (`SESSION_CACHE_TTL`, the Redis timeout and the reuse grace are
//! whole numbers of ticks).
pub mod account;
pub mod revocation;
pub mod rotation;

use std::{fmt::Debug, hash::Hash};

use stateright::{Checker, Model};

/// The outcome of checking one model: states explored and, per property, the shortest
/// counterexample found (BFS), printed as a list of actions.
#[derive(Debug)]
pub struct Outcome {
    pub states: usize,
    pub max_depth: usize,
    /// `(property, shortest trace)` for every `always` property that does not hold and every
    /// `sometimes` property that has an example (which is expected).
    pub discoveries: Vec<(&'static str, String)>,
}

impl Outcome {
    pub fn counterexample(&self, property: &str) -> Option<&str> {
        self.discoveries
            .iter()
            .find(|(p, _)| *p == property)
            .map(|(_, t)| t.as_str())
    }
}

/// Explores every reachable state of `model`.
pub fn check<M>(model: M) -> Outcome
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    run(model.checker())
}

/// Explores `model` until a property fails (the mutation tests), or everything was seen.
pub fn find_failure<M>(model: M) -> Outcome
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    run(model
        .checker()
        .finish_when(stateright::HasDiscoveries::AnyFailures))
}

fn run<M>(builder: stateright::CheckerBuilder<M>) -> Outcome
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    // One thread: breadth first in order, so every trace found is a shortest one.
    let checker = builder.spawn_bfs().join();
    let discoveries = checker
        .discoveries()
        .into_iter()
        .map(|(name, path)| (name, path.to_string()))
        .collect();
    Outcome {
        states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        discoveries,
    }
}
