//! Checks the models exhaustively within the CI bounds, then removes each safeguard in turn and
//! expects the checker to find a counterexample (printing the shortest trace). A larger bound:
//! `cargo test -p sessiond-model --release -- --ignored`.
use sessiond_model::{account, check, find_failure, revocation, rotation, Outcome};

const ALWAYS: &[&str] = &[
    "revoked session refused within the bound",
    "revocation prompt while subscribed",
    "role change prompt while subscribed",
    "live session never refused",
    "one successor per token",
    "reuse after the grace revokes",
    "grace replay returns the same pair",
    "no usable session once answered",
];

#[track_caller]
fn assert_holds(what: &str, outcome: &Outcome, examples: &[&str]) {
    println!(
        "{what}: {} states, depth {}",
        outcome.states, outcome.max_depth
    );
    for (property, trace) in &outcome.discoveries {
        assert!(
            !ALWAYS.contains(property),
            "{what}: `{property}` does not hold:\n{trace}"
        );
    }
    for example in examples {
        assert!(
            outcome.counterexample(example).is_some(),
            "{what}: no example of `{example}`: the model is vacuous"
        );
    }
}

#[track_caller]
fn assert_broken(what: &str, outcome: &Outcome, property: &str) {
    let trace = outcome
        .counterexample(property)
        .unwrap_or_else(|| panic!("{what}: the checker found no counterexample to `{property}`"));
    println!("{what} breaks `{property}`; shortest trace:\n{trace}");
}

fn revocation(silent_loss: bool, g: revocation::Safeguards) -> Outcome {
    let model = revocation::Revocation::ci(silent_loss, g);
    if g == revocation::Safeguards::AS_BUILT {
        check(model)
    } else {
        find_failure(model)
    }
}

#[test]
fn revocation_and_role_changes_hold_as_built() {
    let examples = [
        "a pod serves from its cache",
        "a revocation meets a read in flight",
    ];
    for silent_loss in [false, true] {
        let outcome = revocation(silent_loss, revocation::Safeguards::AS_BUILT);
        assert_holds(
            &format!("revocation, silent loss {silent_loss}"),
            &outcome,
            &examples,
        );
    }
}

#[test]
fn without_a_flush_on_reconnect_a_pod_keeps_serving_a_revoked_session() {
    let g = revocation::Safeguards {
        flush_on_reconnect: false,
        ..revocation::Safeguards::AS_BUILT
    };
    assert_broken(
        "no flush on reconnect",
        &revocation(false, g),
        "revocation prompt while subscribed",
    );
}

/// The race the model found in the code before it: a read that began before a subscription drop
/// and ended after the reconnect cached what it read, after the flush, although a revocation
/// in the gap was never announced to this pod.
#[test]
fn a_flush_that_misses_reads_in_flight_lets_a_revoked_session_back_in() {
    let g = revocation::Safeguards {
        flush_covers_reads_in_flight: false,
        ..revocation::Safeguards::AS_BUILT
    };
    assert_broken(
        "flush without reads in flight",
        &revocation(false, g),
        "revocation prompt while subscribed",
    );
}

#[test]
fn tombstones_shorter_than_the_cache_ttl_let_a_read_in_flight_bring_a_session_back() {
    let g = revocation::Safeguards {
        tombstone_covers_cache_ttl: false,
        ..revocation::Safeguards::AS_BUILT
    };
    assert_broken(
        "tombstones that expire with the read timeout",
        &revocation(false, g),
        "revocation prompt while subscribed",
    );
}

/// The bug the model found in the code before it: a cached answer's age counted from its
/// insertion, so a read in flight during a revocation whose message was lost kept the session
/// for up to SESSION_CACHE_TTL plus the Redis timeout.
#[test]
fn entry_age_from_insertion_exceeds_the_bound_when_a_message_is_lost() {
    let g = revocation::Safeguards {
        entry_age_from_read_start: false,
        ..revocation::Safeguards::AS_BUILT
    };
    assert_broken(
        "entry age from insertion",
        &revocation(true, g),
        "revoked session refused within the bound",
    );
}

/// Why the verified-token cache must remember only the signature check: a token whose acceptance
/// it remembered would be accepted past its session's revocation, even with every message
/// delivered (its lifetime is longer than SESSION_CACHE_TTL and nothing evicts it on a revocation).
#[test]
fn a_token_cache_that_remembers_the_session_outlives_the_revocation() {
    let g = revocation::Safeguards {
        token_cache_holds_no_session_state: false,
        ..revocation::Safeguards::AS_BUILT
    };
    assert_broken(
        "a verified-token cache that remembers acceptance",
        &revocation(false, g),
        "revocation prompt while subscribed",
    );
}

#[test]
fn rotation_holds_as_built() {
    let outcome = check(rotation::Rotation::ci(rotation::Safeguards::AS_BUILT));
    assert_holds(
        "rotation",
        &outcome,
        &["a reuse ends the session", "a family rotates twice"],
    );
}

#[test]
fn a_non_atomic_rotation_forks_the_family() {
    let g = rotation::Safeguards {
        atomic_rotation: false,
        ..rotation::Safeguards::AS_BUILT
    };
    assert_broken(
        "non-atomic rotation",
        &find_failure(rotation::Rotation::ci(g)),
        "one successor per token",
    );
}

#[test]
fn without_reuse_detection_a_stolen_token_outlives_the_grace() {
    let g = rotation::Safeguards {
        reuse_detection: false,
        ..rotation::Safeguards::AS_BUILT
    };
    assert_broken(
        "no reuse detection",
        &find_failure(rotation::Rotation::ci(g)),
        "reuse after the grace revokes",
    );
}

#[test]
fn disabling_or_deleting_leaves_no_usable_session_as_built() {
    let outcome = check(account::Account {
        safeguards: account::Safeguards::AS_BUILT,
    });
    assert_holds(
        "account disable/delete",
        &outcome,
        &["a login races the operation"],
    );
}

#[test]
fn without_the_per_user_marker_a_failed_revocation_leaves_a_session() {
    let g = account::Safeguards {
        marker_first: false,
        scripts_check_marker: false,
    };
    assert_broken(
        "no per-user marker",
        &find_failure(account::Account { safeguards: g }),
        "no usable session once answered",
    );
}

#[test]
fn a_login_that_ignores_the_marker_races_a_disable() {
    let g = account::Safeguards {
        scripts_check_marker: false,
        ..account::Safeguards::AS_BUILT
    };
    assert_broken(
        "create script ignores the marker",
        &find_failure(account::Account { safeguards: g }),
        "no usable session once answered",
    );
}

/// Three pods and more time: minutes in release mode, so not part of `cargo test`.
#[test]
#[ignore]
fn larger_bound_three_pods() {
    for silent_loss in [false, true] {
        let model = revocation::Revocation {
            pods: 3,
            ttl: 3,
            timeout: 1,
            max_time: 6,
            silent_loss,
            drops: 2,
            safeguards: revocation::Safeguards::AS_BUILT,
        };
        assert_holds(
            &format!("revocation, 3 pods, silent loss {silent_loss}"),
            &check(model),
            &["a pod serves from its cache"],
        );
    }
    let rotation = rotation::Rotation {
        grace: 2,
        max_time: 5,
        max_tokens: 6,
        safeguards: rotation::Safeguards::AS_BUILT,
    };
    assert_holds("rotation, larger", &check(rotation), &[]);
}
