//! Given/when/then over `decide` and `evolve`: given these recorded events, when this
//! command, then these new events — or this refusal.

use crate::*;
use serde_json::json;
use time::{Duration, OffsetDateTime, macros::datetime};
use uuid::Uuid;

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

fn user() -> UserId {
    UserId::new(4242).expect("valid user")
}

fn ams() -> LocationId {
    LocationId::new("ams").expect("valid location")
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

struct Given(KeyState);

fn given(events: &[KeyEvent]) -> Given {
    Given(replay(events))
}

struct Then {
    state: KeyState,
    result: Result<Vec<KeyEvent>, DomainError>,
}

impl Given {
    fn when(self, command: KeyCommand) -> Then {
        let result = decide(&self.0, &command);
        Then {
            state: self.0,
            result,
        }
    }
}

impl Then {
    /// Asserts the events and returns the state after them.
    fn then(self, expected: &[KeyEvent]) -> KeyState {
        let events = self.result.expect("command accepted");
        assert_eq!(events, expected);
        events.iter().fold(self.state, evolve)
    }

    fn then_recorded(self) -> Vec<KeyEvent> {
        self.result.expect("command accepted")
    }

    fn then_nothing(self) {
        assert_eq!(self.result.expect("command accepted"), vec![]);
    }

    fn then_refused(self, expected: DomainError) {
        assert_eq!(self.result.expect_err("command refused"), expected);
    }
}

fn request_cmd(fresh: u128, expires_at: Option<OffsetDateTime>) -> KeyCommand {
    KeyCommand::Request(RequestKey {
        user_id: user(),
        location: ams(),
        fresh_client_uuid: uuid(fresh),
        expires_at,
        traffic_limit_bytes: 0,
        now: NOW,
    })
}

fn requested(client: u128) -> KeyEvent {
    requested_until(client, None)
}

fn requested_until(client: u128, expires_at: Option<OffsetDateTime>) -> KeyEvent {
    KeyEvent::Requested(KeyRequested {
        user_id: user(),
        location: ams(),
        client_uuid: uuid(client),
        email: "tg4242-ams".into(),
        expires_at,
        traffic_limit_bytes: 0,
    })
}

fn provisioned(client: u128) -> KeyEvent {
    KeyEvent::Provisioned(KeyProvisioned {
        client_uuid: uuid(client),
        inbound_id: 1,
        link: Some(link(client)),
    })
}

/// A stand-in for the worker's rendered link of client `n`.
fn link(client: u128) -> String {
    format!(
        "vless://{}@ams.example.com:443?type=tcp#ams-tg4242-ams",
        uuid(client)
    )
}

fn confirm_provisioned(client: u128) -> KeyCommand {
    KeyCommand::ConfirmProvisioned(ConfirmProvisioned {
        client_uuid: uuid(client),
        inbound_id: 1,
        link: Some(link(client)),
    })
}

fn confirm_rotated(client: u128) -> KeyCommand {
    KeyCommand::ConfirmRotated(ConfirmRotated {
        client_uuid: uuid(client),
        link: Some(link(client)),
    })
}

fn rotation(old: u128, new: u128) -> KeyEvent {
    KeyEvent::RotationRequested(KeyRotationRequested {
        old_client_uuid: uuid(old),
        new_client_uuid: uuid(new),
    })
}

fn rotated(client: u128) -> KeyEvent {
    KeyEvent::Rotated(KeyRotated {
        client_uuid: uuid(client),
        link: Some(link(client)),
    })
}

fn revocation(reason: &str) -> KeyEvent {
    KeyEvent::RevocationRequested(KeyRevocationRequested {
        reason: reason.into(),
    })
}

fn revoked() -> KeyEvent {
    KeyEvent::Revoked(KeyRevoked {})
}

fn rotate_cmd(fresh: u128) -> KeyCommand {
    KeyCommand::Rotate(RotateKey {
        fresh_client_uuid: uuid(fresh),
    })
}

fn revoke_cmd(reason: &str) -> KeyCommand {
    KeyCommand::Revoke(RevokeKey {
        reason: reason.into(),
    })
}

fn active_key() -> Vec<KeyEvent> {
    vec![requested(1), provisioned(1)]
}

// --- request ---------------------------------------------------------------------------

#[test]
fn requesting_a_key_mints_the_given_client_uuid_and_email() {
    let state = given(&[]).when(request_cmd(1, None)).then(&[requested(1)]);
    assert_eq!(state.status(), Some(KeyStatus::Provisioning));
    assert_eq!(state.version, 1);
}

#[test]
fn requesting_a_key_you_already_have_is_idempotent() {
    given(&[requested(1)])
        .when(request_cmd(2, None))
        .then_nothing();
    given(&active_key())
        .when(request_cmd(2, None))
        .then_nothing();
    given(&[requested(1), provisioned(1), rotation(1, 2)])
        .when(request_cmd(3, None))
        .then_nothing();
}

#[test]
fn a_revoked_key_can_be_requested_again_with_a_new_client() {
    let mut history = active_key();
    history.extend([revocation("lost phone"), revoked()]);
    let state = given(&history)
        .when(request_cmd(2, None))
        .then(&[requested(2)]);
    assert_eq!(state.status(), Some(KeyStatus::Provisioning));
    given(&history)
        .when(request_cmd(1, None))
        .then_refused(DomainError::ClientUuidReused(uuid(1)));
}

#[test]
fn a_request_with_an_expiry_in_the_past_is_refused() {
    given(&[])
        .when(request_cmd(1, Some(NOW - Duration::hours(1))))
        .then_refused(DomainError::ExpiryNotInFuture {
            expires_at: NOW - Duration::hours(1),
            now: NOW,
        });
}

#[test]
fn a_request_for_another_user_in_this_stream_is_refused() {
    let other = KeyCommand::Request(RequestKey {
        user_id: UserId::new(1).expect("valid"),
        location: ams(),
        fresh_client_uuid: uuid(9),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: NOW,
    });
    given(&[requested(1)])
        .when(other)
        .then_refused(DomainError::IdentityMismatch);
}

#[test]
fn the_nil_uuid_is_never_minted() {
    given(&[])
        .when(request_cmd(0, None))
        .then_refused(DomainError::ClientUuidReused(Uuid::nil()));
}

// --- acknowledgements ----------------------------------------------------------------

#[test]
fn the_panels_confirmation_activates_the_key() {
    let state = given(&[requested(1)])
        .when(confirm_provisioned(1))
        .then(&[provisioned(1)]);
    assert_eq!(state.status(), Some(KeyStatus::Active));
}

#[test]
fn a_duplicate_confirmation_records_nothing() {
    given(&active_key())
        .when(confirm_provisioned(1))
        .then_nothing();
}

#[test]
fn a_stale_acknowledgement_cannot_resurrect_an_old_uuid() {
    let history = [requested(1), provisioned(1), rotation(1, 2)];
    given(&history).when(confirm_rotated(1)).then_nothing();
    given(&history).when(confirm_provisioned(1)).then_nothing();
    let state = given(&history).when(confirm_rotated(2)).then(&[rotated(2)]);
    assert_eq!(state.details.expect("details").client_uuid, uuid(2));
}

#[test]
fn the_link_belongs_to_the_current_client_only() {
    let state = given(&[requested(1)])
        .when(confirm_provisioned(1))
        .then(&[provisioned(1)]);
    assert_eq!(state.details.as_ref().expect("details").link, Some(link(1)));

    // A refresh was asked for: the old link must not be shown any more, even before the
    // panel confirms the new client.
    let rotating = given(&[requested(1), provisioned(1)])
        .when(rotate_cmd(2))
        .then(&[rotation(1, 2)]);
    assert_eq!(rotating.details.as_ref().expect("details").link, None);
    let state = given(&[requested(1), provisioned(1), rotation(1, 2)])
        .when(confirm_rotated(2))
        .then(&[rotated(2)]);
    let details = state.details.expect("details");
    assert_eq!(details.link, Some(link(2)));
    assert!(details.link.expect("link").contains(&uuid(2).to_string()));

    let revoking = given(&[requested(1), provisioned(1)])
        .when(revoke_cmd("done"))
        .then(&[revocation("done")]);
    assert_eq!(revoking.details.expect("details").link, None);
}

#[test]
fn an_acknowledgement_recorded_before_links_were_kept_leaves_no_link() {
    let old_provisioned = KeyEvent::from_parts(
        EventType::Provisioned.as_str(),
        &json!({"client_uuid": uuid(1), "inbound_id": 1}),
    )
    .expect("the old shape still decodes");
    let state = replay(&[requested(1), old_provisioned]);
    assert_eq!(state.status(), Some(KeyStatus::Active));
    assert_eq!(state.details.expect("details").link, None);
}

#[test]
fn acknowledgements_for_an_unknown_key_are_refused() {
    given(&[])
        .when(KeyCommand::ConfirmRevoked(ConfirmRevoked {
            client_uuid: uuid(1),
        }))
        .then_refused(DomainError::KeyNotFound);
}

// --- rotation ------------------------------------------------------------------------

#[test]
fn rotation_mints_a_uuid_the_key_never_had() {
    let state = given(&active_key())
        .when(rotate_cmd(2))
        .then(&[rotation(1, 2)]);
    assert_eq!(state.status(), Some(KeyStatus::Rotating));

    let history = [requested(1), provisioned(1), rotation(1, 2), rotated(2)];
    given(&history)
        .when(rotate_cmd(1))
        .then_refused(DomainError::ClientUuidReused(uuid(1)));
    given(&history)
        .when(rotate_cmd(2))
        .then_refused(DomainError::ClientUuidReused(uuid(2)));
    given(&history).when(rotate_cmd(3)).then(&[rotation(2, 3)]);
}

#[test]
fn every_rotation_in_a_long_history_yields_a_new_uuid() {
    let mut state = replay(&active_key());
    for fresh in 2..50u128 {
        let events = decide(&state, &rotate_cmd(fresh)).expect("rotation accepted");
        state = events.iter().fold(state, evolve);
        state = evolve(state, &rotated(fresh));
    }
    assert_eq!(state.used_client_uuids.len(), 49);
    for old in 1..50u128 {
        assert!(
            decide(&state, &rotate_cmd(old)).is_err(),
            "uuid {old} reused"
        );
    }
}

#[test]
fn a_second_rotation_waits_for_the_first() {
    given(&[requested(1), provisioned(1), rotation(1, 2)])
        .when(rotate_cmd(3))
        .then_refused(DomainError::RotationInProgress);
}

#[test]
fn rotation_before_provisioning_is_refused() {
    given(&[requested(1)])
        .when(rotate_cmd(2))
        .then_refused(DomainError::NotYetProvisioned);
    given(&[])
        .when(rotate_cmd(2))
        .then_refused(DomainError::KeyNotFound);
}

// --- revocation ----------------------------------------------------------------------

#[test]
fn revocation_is_recorded_then_confirmed() {
    let state = given(&active_key())
        .when(revoke_cmd("  user asked  "))
        .then(&[revocation("user asked")]);
    assert_eq!(state.status(), Some(KeyStatus::Revoking));
    assert_eq!(state.desired_client(), None);
    let state = Given(state)
        .when(KeyCommand::ConfirmRevoked(ConfirmRevoked {
            client_uuid: uuid(1),
        }))
        .then(&[revoked()]);
    assert_eq!(state.status(), Some(KeyStatus::Revoked));
}

#[test]
fn revoking_twice_is_idempotent() {
    given(&[requested(1), revocation("x")])
        .when(revoke_cmd("again"))
        .then_nothing();
    given(&[requested(1), revocation("x"), revoked()])
        .when(revoke_cmd("again"))
        .then_nothing();
}

#[test]
fn a_revocation_needs_a_reason() {
    let refusal = DomainError::InvalidReason { max: 500 };
    given(&active_key())
        .when(revoke_cmd("   "))
        .then_refused(refusal.clone());
    given(&active_key())
        .when(revoke_cmd(&"x".repeat(501)))
        .then_refused(refusal);
    given(&[])
        .when(revoke_cmd("why"))
        .then_refused(DomainError::KeyNotFound);
}

#[test]
fn nothing_happens_to_a_revoked_key_except_a_new_request() {
    let history = [requested(1), provisioned(1), revocation("x"), revoked()];
    given(&history)
        .when(rotate_cmd(2))
        .then_refused(DomainError::KeyRevoked);
    given(&history)
        .when(KeyCommand::Renew(RenewKey {
            expires_at: NOW + Duration::days(30),
            now: NOW,
        }))
        .then_refused(DomainError::KeyRevoked);
    given(&history)
        .when(KeyCommand::Expire(ExpireKey { now: NOW }))
        .then_nothing();
    given(&history).when(confirm_provisioned(1)).then_nothing();
    given(&history)
        .when(KeyCommand::RecordProvisioningFailure(
            RecordProvisioningFailure {
                attempt: 1,
                error: "boom".into(),
                retry_at: NOW,
            },
        ))
        .then_refused(DomainError::WrongPhase(Phase::Revoked));
}

#[test]
fn a_revocation_ack_for_a_re_requested_key_is_stale() {
    given(&[requested(1), revocation("x"), revoked(), requested(2)])
        .when(KeyCommand::ConfirmRevoked(ConfirmRevoked {
            client_uuid: uuid(1),
        }))
        .then_nothing();
}

// --- expiry and renewal --------------------------------------------------------------

#[test]
fn a_key_expires_once_its_time_has_passed() {
    let until = NOW + Duration::days(1);
    let history = [requested_until(1, Some(until)), provisioned(1)];
    given(&history)
        .when(KeyCommand::Expire(ExpireKey { now: NOW }))
        .then_refused(DomainError::NotYetDue {
            expires_at: Some(until),
        });
    let state = given(&history)
        .when(KeyCommand::Expire(ExpireKey { now: until }))
        .then(&[KeyEvent::Expired(KeyExpired {})]);
    assert_eq!(state.status(), Some(KeyStatus::Expired));
    let desired = state.desired_client().expect("expired keys stay, disabled");
    assert!(!desired.enable);
    Given(state)
        .when(KeyCommand::Expire(ExpireKey { now: until }))
        .then_nothing();
}

#[test]
fn a_key_without_expiry_never_expires() {
    given(&active_key())
        .when(KeyCommand::Expire(ExpireKey {
            now: NOW + Duration::days(10_000),
        }))
        .then_refused(DomainError::NotYetDue { expires_at: None });
}

#[test]
fn renewing_extends_expiry_and_revives_an_expired_key() {
    let until = NOW + Duration::days(1);
    let later = NOW + Duration::days(31);
    let renew = |expires_at| {
        KeyCommand::Renew(RenewKey {
            expires_at,
            now: NOW,
        })
    };
    let renewed = KeyEvent::Renewed(KeyRenewed { expires_at: later });
    let state = given(&[requested_until(1, Some(until)), provisioned(1)])
        .when(renew(later))
        .then(std::slice::from_ref(&renewed));
    assert_eq!(state.status(), Some(KeyStatus::Active));
    Given(state).when(renew(later)).then_nothing();

    let expired = [
        requested_until(1, Some(until)),
        provisioned(1),
        KeyEvent::Expired(KeyExpired {}),
    ];
    let state = given(&expired).when(renew(later)).then(&[renewed]);
    assert_eq!(state.status(), Some(KeyStatus::Provisioning));
    assert!(state.desired_client().expect("client").enable);

    given(&expired)
        .when(renew(NOW))
        .then_refused(DomainError::ExpiryNotInFuture {
            expires_at: NOW,
            now: NOW,
        });
    given(&[])
        .when(renew(later))
        .then_refused(DomainError::KeyNotFound);
}

#[test]
fn an_expired_key_cannot_be_rotated_but_can_be_requested_anew() {
    let expired = [
        requested_until(1, Some(NOW)),
        provisioned(1),
        KeyEvent::Expired(KeyExpired {}),
    ];
    given(&expired)
        .when(rotate_cmd(2))
        .then_refused(DomainError::KeyExpired);
    given(&expired)
        .when(request_cmd(2, None))
        .then(&[requested(2)]);
}

// --- failures and drift --------------------------------------------------------------

fn failure(attempt: u32, error: &str) -> KeyCommand {
    KeyCommand::RecordProvisioningFailure(RecordProvisioningFailure {
        attempt,
        error: error.into(),
        retry_at: NOW,
    })
}

fn failed(attempt: u32, error: &str) -> KeyEvent {
    KeyEvent::ProvisioningFailed(KeyProvisioningFailed {
        attempt,
        error: error.into(),
        retry_at: NOW,
    })
}

#[test]
fn failures_are_recorded_when_they_start_and_when_they_change() {
    let state = given(&[requested(1)])
        .when(failure(1, "panel answered 500"))
        .then(&[failed(1, "panel answered 500")]);
    assert_eq!(state.status(), Some(KeyStatus::Failed));
    given(&[requested(1), failed(1, "panel answered 500")])
        .when(failure(2, "panel answered 500"))
        .then_nothing();
    given(&[requested(1), failed(1, "panel answered 500")])
        .when(failure(3, "connection refused"))
        .then(&[failed(3, "connection refused")]);
    let state = given(&[requested(1), failed(1, "x"), provisioned(1)]).0;
    assert_eq!(state.status(), Some(KeyStatus::Active));
}

#[test]
fn a_failure_record_must_say_what_failed() {
    given(&[requested(1)])
        .when(failure(1, " "))
        .then_refused(DomainError::InvalidFailure);
    given(&[requested(1)])
        .when(failure(0, "x"))
        .then_refused(DomainError::InvalidFailure);
    given(&active_key())
        .when(failure(1, "x"))
        .then_refused(DomainError::WrongPhase(Phase::Active));
}

#[test]
fn a_panel_text_is_recorded_clean_and_bounded() {
    use crate::decide::MAX_ERROR_CHARS;
    let hostile = format!(
        "refused\n\u{1b}[31mfake line\0{}",
        "x".repeat(MAX_ERROR_CHARS * 3)
    );
    let events = given(&[requested(1)])
        .when(failure(1, &hostile))
        .then_recorded();
    let Some(KeyEvent::ProvisioningFailed(event)) = events.first() else {
        panic!("{events:?}");
    };
    assert_eq!(event.error.chars().count(), MAX_ERROR_CHARS);
    assert!(
        event.error.starts_with("refused fake line\u{fffd}xxx"),
        "{}",
        event.error
    );
    assert!(!event.error.chars().any(char::is_control));
    let observed =
        json!({"email": "tg4242-ams", "flow": "\u{1b}[2J".to_owned() + &"y".repeat(5000)});
    let drift = given(&active_key())
        .when(KeyCommand::RecordDrift(RecordDrift {
            kind: DriftKind::SettingsDiffer,
            expected: json!(null),
            observed,
        }))
        .then_recorded();
    let Some(KeyEvent::DriftDetected(event)) = drift.first() else {
        panic!("{drift:?}");
    };
    let flow = event.observed["flow"].as_str().unwrap_or_default();
    assert_eq!(flow.chars().count(), crate::MAX_FOREIGN_TEXT_CHARS);
    assert!(flow.starts_with("yyy"), "{flow}");
}

#[test]
fn drift_findings_and_repairs_are_recorded() {
    let expected = json!({"id": uuid(1)});
    given(&active_key())
        .when(KeyCommand::RecordDrift(RecordDrift {
            kind: DriftKind::MissingOnPanel,
            expected: expected.clone(),
            observed: json!(null),
        }))
        .then(&[KeyEvent::DriftDetected(KeyDriftDetected {
            kind: DriftKind::MissingOnPanel,
            expected,
            observed: json!(null),
        })]);
    given(&active_key())
        .when(KeyCommand::RecordDriftRepaired(RecordDriftRepaired {
            kind: DriftKind::MissingOnPanel,
        }))
        .then(&[KeyEvent::DriftRepaired(KeyDriftRepaired {
            kind: DriftKind::MissingOnPanel,
        })]);
    given(&[])
        .when(KeyCommand::RecordDriftRepaired(RecordDriftRepaired {
            kind: DriftKind::UnknownOnPanel,
        }))
        .then_refused(DomainError::KeyNotFound);
}

#[test]
fn desired_state_follows_the_phase() {
    let until = datetime!(2030-01-01 00:00 UTC);
    let state = replay(&[
        requested_until(1, Some(until)),
        provisioned(1),
        rotation(1, 2),
    ]);
    let desired = state.desired_client().expect("live key has a client");
    assert_eq!(desired.client_uuid, uuid(2));
    assert_eq!(desired.email, "tg4242-ams");
    assert!(desired.enable);
    assert_eq!(desired.expiry_time_ms, 1_893_456_000_000);
    assert_eq!(desired.telegram_id, 4242);
    assert_eq!(replay(&[]).desired_client(), None);
}

fn depleted(used: u64, limit: u64) -> KeyEvent {
    KeyEvent::Depleted(KeyDepleted {
        used_bytes: used,
        limit_bytes: limit,
    })
}

fn depletion_cmd(used: u64, limit: u64) -> KeyCommand {
    KeyCommand::RecordDepletion(RecordDepletion {
        used_bytes: used,
        limit_bytes: limit,
    })
}

fn quota_cmd(limit: u64, reset_usage: bool, used: u64) -> KeyCommand {
    KeyCommand::ChangeQuota(ChangeQuota {
        traffic_limit_bytes: limit,
        reset_usage,
        used_bytes: used,
    })
}

fn depleted_key() -> Vec<KeyEvent> {
    let mut events = active_key();
    events.push(depleted(1_100, 1_000));
    events
}

#[test]
fn the_panels_depletion_is_recorded_once_and_keeps_the_client_disabled() {
    let state = given(&active_key())
        .when(depletion_cmd(1_100, 1_000))
        .then(&[depleted(1_100, 1_000)]);
    assert_eq!(state.status(), Some(KeyStatus::Depleted));
    let desired = state
        .desired_client()
        .expect("the client stays on the panel");
    assert!(!desired.enable, "the panel's decision is the desired state");
    assert!(
        state
            .details
            .as_ref()
            .and_then(|d| d.link.clone())
            .is_some()
    );
    given(&depleted_key())
        .when(depletion_cmd(1_200, 1_000))
        .then_nothing();
}

#[test]
fn depletion_seen_while_a_change_is_on_its_way_records_nothing() {
    let mut provisioning = vec![requested(1)];
    given(&provisioning)
        .when(depletion_cmd(5, 1))
        .then_nothing();
    provisioning.extend([provisioned(1), rotation(1, 2)]);
    given(&provisioning)
        .when(depletion_cmd(5, 1))
        .then_nothing();
}

#[test]
fn a_depleted_key_is_still_held_and_cannot_be_rotated_or_requested_anew() {
    given(&depleted_key())
        .when(rotate_cmd(9))
        .then_refused(DomainError::KeyDepleted);
    given(&depleted_key())
        .when(request_cmd(9, None))
        .then_nothing();
}

#[test]
fn a_new_limit_above_the_usage_or_a_reset_brings_a_depleted_key_back() {
    let state = given(&depleted_key())
        .when(quota_cmd(5_000, false, 1_100))
        .then(&[KeyEvent::QuotaChanged(KeyQuotaChanged {
            traffic_limit_bytes: 5_000,
            reset_usage: false,
        })]);
    assert_eq!(state.status(), Some(KeyStatus::Active));
    let desired = state.desired_client().expect("client");
    assert!(desired.enable);
    assert_eq!(desired.total_bytes, 5_000);

    let state = given(&depleted_key())
        .when(quota_cmd(1_000, true, 1_100))
        .then(&[KeyEvent::QuotaChanged(KeyQuotaChanged {
            traffic_limit_bytes: 1_000,
            reset_usage: true,
        })]);
    assert_eq!(state.status(), Some(KeyStatus::Active));
}

#[test]
fn a_limit_already_used_up_does_not_bring_a_depleted_key_back() {
    given(&depleted_key())
        .when(quota_cmd(1_050, false, 1_100))
        .then_refused(DomainError::QuotaStillUsedUp {
            used_bytes: 1_100,
            limit_bytes: 1_050,
        });
    // No limit at all always brings it back.
    given(&depleted_key())
        .when(quota_cmd(0, false, 1_100))
        .then(&[KeyEvent::QuotaChanged(KeyQuotaChanged {
            traffic_limit_bytes: 0,
            reset_usage: false,
        })]);
}

#[test]
fn an_unchanged_limit_without_a_reset_records_nothing_and_revoked_keys_refuse() {
    given(&active_key())
        .when(quota_cmd(0, false, 0))
        .then_nothing();
    let mut revoked_key = active_key();
    revoked_key.extend([revocation("lost"), revoked()]);
    given(&revoked_key)
        .when(quota_cmd(10, true, 0))
        .then_refused(DomainError::KeyRevoked);
}
