//! Scheduled and recurring transfers against a real Postgres and JetStream:
//! each occurrence is an ordinary transfer made once, a refusal is recorded
//! with its reason and retried, and only the owner reaches a schedule.

mod common;

use std::time::{Duration, Instant};

use bank_proto::v1 as pb;
use bank_testkit::authed;
use chrono::{DateTime, Utc};
use common::{Harness, key, reason, usd, violation_fields};
use tonic::Code;
use uuid::Uuid;

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 })
}

fn instant(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = t.as_ref().expect("a timestamp");
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

/// Polls often, retries a refusal a second later, three attempts.
async fn start() -> Harness {
    Harness::start_with(&bank_testkit::nats_url_as(bank_testkit::Principal::Command), |c| {
        c.scheduler_poll = Duration::from_millis(50);
        c.schedule_retry.delay = chrono::Duration::seconds(1);
    })
    .await
}

fn request(
    from: &str,
    to: &str,
    amount: &str,
    cadence: pb::Cadence,
    start: DateTime<Utc>,
) -> pb::CreateScheduledTransferRequest {
    pb::CreateScheduledTransferRequest {
        from_account_id: from.into(),
        to_account_id: to.into(),
        money: usd(amount),
        description: "rent".into(),
        cadence: cadence.into(),
        start_at: ts(start),
        idempotency_key: key(),
        ..Default::default()
    }
}

async fn create(
    h: &Harness,
    token: &str,
    r: pb::CreateScheduledTransferRequest,
) -> Result<pb::ScheduledTransfer, tonic::Status> {
    h.client.clone().create_scheduled_transfer(authed(r, token)).await.map(|r| r.into_inner())
}

async fn get(h: &Harness, token: &str, id: &str) -> Result<pb::ScheduledTransfer, tonic::Status> {
    let r = pb::GetScheduledTransferRequest { schedule_id: id.into() };
    h.client.clone().get_scheduled_transfer(authed(r, token)).await.map(|r| r.into_inner())
}

/// The schedule once `done` holds of it (within 15 s).
async fn wait_for(
    h: &Harness,
    token: &str,
    id: &str,
    done: impl Fn(&pb::ScheduledTransfer) -> bool,
) -> pb::ScheduledTransfer {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = get(h, token, id).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "the schedule never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed(s: &pb::ScheduledTransfer) -> bool {
    s.state() == pb::ScheduleState::Completed
}

/// An owner with a funded account, and a payee's account.
async fn owner_and_payee(h: &Harness, funds: Option<&str>) -> (String, String, String) {
    let (_, owner) = h.customer();
    let from = h.open(&owner, "USD").await;
    if let Some(amount) = funds {
        h.fund(&from, amount).await;
    }
    let to = h.open(&h.customer().1, "USD").await;
    (owner, from, to)
}

async fn transfers_under_scheduler_keys(h: &Harness, schedule: &str) -> i64 {
    // Not the records of refused attempts (`…:refused`, the bank's).
    sqlx::query_scalar(
        "SELECT count(*) FROM idempotency WHERE key LIKE $1 AND key NOT LIKE '%:refused' AND response IS NOT NULL",
    )
    .bind(format!("schedule:{schedule}:%"))
    .fetch_one(&h.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_one_off_runs_at_its_time_as_an_ordinary_transfer_once() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, Some("100.00")).await;
    let at = Utc::now() + chrono::Duration::seconds(1);
    let created = create(&h, &owner, request(&from, &to, "10.00", pb::Cadence::Once, at)).await.unwrap();
    assert_eq!(created.state(), pb::ScheduleState::Active);
    assert_eq!(instant(&created.next_run_at).timestamp_micros(), at.timestamp_micros());
    assert_eq!(h.balance(&from).await, "100.00", "nothing moves before its time");

    let done = wait_for(&h, &owner, &created.schedule_id, completed).await;
    let ran = &done.recent_occurrences;
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!((ran[0].occurrence, ran[0].attempt, ran[0].outcome()), (0, 1, pb::OccurrenceOutcome::Succeeded));
    assert!(instant(&ran[0].ran_at) >= instant(&ran[0].due_at));
    assert!(Uuid::try_parse(&ran[0].transaction_id).is_ok());
    assert!(done.next_run_at.is_none());
    assert_eq!((h.balance(&from).await, h.balance(&to).await), ("90.00".into(), "10.00".into()));
    assert_eq!(transfers_under_scheduler_keys(&h, &created.schedule_id).await, 1);
}

#[tokio::test]
async fn a_refused_occurrence_is_recorded_with_its_reason_and_made_once_the_money_is_there() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, None).await;
    let at = Utc::now() + chrono::Duration::milliseconds(500);
    let s = create(&h, &owner, request(&from, &to, "10.00", pb::Cadence::Once, at)).await.unwrap();

    let refused = wait_for(&h, &owner, &s.schedule_id, |s| !s.recent_occurrences.is_empty()).await;
    let first = &refused.recent_occurrences[0];
    assert_eq!(
        (first.attempt, first.outcome(), first.reason.as_str()),
        (1, pb::OccurrenceOutcome::Refused, "INSUFFICIENT_FUNDS")
    );
    assert_eq!((refused.state(), refused.next_occurrence, refused.next_attempt), (pb::ScheduleState::Active, 0, 2));

    h.fund(&from, "10.00").await;
    let done = wait_for(&h, &owner, &s.schedule_id, completed).await;
    let outcomes: Vec<_> = done.recent_occurrences.iter().map(|o| (o.attempt, o.outcome())).collect();
    assert_eq!(outcomes.last(), Some(&(1, pb::OccurrenceOutcome::Refused)));
    assert_eq!(outcomes.first().map(|o| o.1), Some(pb::OccurrenceOutcome::Succeeded), "{outcomes:?}");
    assert_eq!((h.balance(&from).await, h.balance(&to).await), ("0.00".into(), "10.00".into()));
    assert_eq!(transfers_under_scheduler_keys(&h, &s.schedule_id).await, 1);
    // Each refused attempt is on the source account's chain, by the bank,
    // once: that is how its owner is told.
    let on_chain: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT actor, count(*) FROM events WHERE account_id = $1::uuid AND kind = 'ScheduledTransferRefused' GROUP BY actor",
    )
    .bind(&from)
    .fetch_all(&h.db)
    .await
    .unwrap();
    let refusals = done.recent_occurrences.iter().filter(|o| o.outcome() == pb::OccurrenceOutcome::Refused).count();
    assert_eq!(on_chain, [(Uuid::nil(), refusals as i64)]);
}

#[tokio::test]
async fn an_occurrence_refused_on_every_attempt_fails_and_the_schedule_moves_on_to_the_next() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, None).await;
    let at = Utc::now() + chrono::Duration::milliseconds(500);
    let s = create(&h, &owner, request(&from, &to, "5.00", pb::Cadence::Daily, at)).await.unwrap();

    let moved_on = wait_for(&h, &owner, &s.schedule_id, |s| s.next_occurrence == 1).await;
    let outcomes: Vec<_> = moved_on.recent_occurrences.iter().map(|o| (o.occurrence, o.attempt, o.outcome())).collect();
    assert_eq!(
        outcomes,
        [
            (0, 3, pb::OccurrenceOutcome::Failed),
            (0, 2, pb::OccurrenceOutcome::Refused),
            (0, 1, pb::OccurrenceOutcome::Refused)
        ]
    );
    assert_eq!(moved_on.state(), pb::ScheduleState::Active);
    assert_eq!(instant(&moved_on.next_run_at).timestamp_micros(), (at + chrono::Duration::days(1)).timestamp_micros());
    assert_eq!(h.balance(&to).await, "0.00");
}

#[tokio::test]
async fn monthly_on_the_31st_runs_on_the_last_day_of_february_and_keeps_berlin_time_across_daylight_saving() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, Some("100.00")).await;
    // 09:00 in Berlin on the 31st: 08:00 UTC in winter, 07:00 UTC in summer.
    let first: DateTime<Utc> = "2027-01-31T08:00:00Z".parse().unwrap();
    let mut r = request(&from, &to, "1.00", pb::Cadence::Monthly, first);
    r.time_zone = "Europe/Berlin".into();
    r.day_of_month = 31;
    let s = create(&h, &owner, r).await.unwrap();
    assert_eq!(instant(&s.next_run_at), first);

    let mut runs = Vec::new();
    for n in 1..=3 {
        // The clock jumps: the occurrence due next is made due now. It runs
        // once, and the next one is computed from the start, not from now.
        sqlx::query("UPDATE scheduled_transfers SET next_run_at = now() WHERE id = $1::uuid")
            .bind(&s.schedule_id)
            .execute(&h.db)
            .await
            .unwrap();
        let after = wait_for(&h, &owner, &s.schedule_id, |s| s.next_occurrence == n).await;
        runs.push(instant(&after.next_run_at).to_rfc3339());
    }
    assert_eq!(runs, ["2027-02-28T08:00:00+00:00", "2027-03-31T07:00:00+00:00", "2027-04-30T07:00:00+00:00"]);
    assert_eq!(h.balance(&to).await, "3.00", "three occurrences, three transfers");
}

#[tokio::test]
async fn pause_resume_and_cancel_set_a_state_and_a_cancelled_schedule_stays_cancelled() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, Some("100.00")).await;
    let mut c = h.client.clone();
    let at = Utc::now() + chrono::Duration::milliseconds(700);
    let once = create(&h, &owner, request(&from, &to, "10.00", pb::Cadence::Once, at)).await.unwrap();
    let id = || once.schedule_id.clone();
    let paused =
        c.pause_scheduled_transfer(authed(pb::PauseScheduledTransferRequest { schedule_id: id() }, &owner)).await;
    assert_eq!(paused.unwrap().into_inner().state(), pb::ScheduleState::Paused);
    let again =
        c.pause_scheduled_transfer(authed(pb::PauseScheduledTransferRequest { schedule_id: id() }, &owner)).await;
    assert_eq!(again.unwrap().into_inner().state(), pb::ScheduleState::Paused, "pausing twice is pausing once");

    // Its time passes while paused: nothing runs, and resuming does not run it late.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(get(&h, &owner, &id()).await.unwrap().recent_occurrences.is_empty());
    let resumed =
        c.resume_scheduled_transfer(authed(pb::ResumeScheduledTransferRequest { schedule_id: id() }, &owner)).await;
    assert_eq!(resumed.unwrap().into_inner().state(), pb::ScheduleState::Completed);
    assert_eq!(h.balance(&from).await, "100.00");

    let daily =
        create(&h, &owner, request(&from, &to, "1.00", pb::Cadence::Daily, Utc::now() + chrono::Duration::hours(1)))
            .await
            .unwrap();
    let cancel = pb::CancelScheduledTransferRequest { schedule_id: daily.schedule_id.clone() };
    let cancelled = c.cancel_scheduled_transfer(authed(cancel.clone(), &owner)).await.unwrap().into_inner();
    assert_eq!(cancelled.state(), pb::ScheduleState::Cancelled);
    assert!(cancelled.next_run_at.is_none());
    assert!(c.cancel_scheduled_transfer(authed(cancel, &owner)).await.is_ok(), "cancelling twice is cancelling once");
    let resume = pb::ResumeScheduledTransferRequest { schedule_id: daily.schedule_id.clone() };
    let refused = c.resume_scheduled_transfer(authed(resume, &owner)).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused)), (Code::FailedPrecondition, "SCHEDULE_CANCELLED".into()));

    let page = c
        .list_scheduled_transfers(authed(
            pb::ListScheduledTransfersRequest { page_size: 1, page_token: String::new() },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.schedules[0].schedule_id, daily.schedule_id, "newest first");
    let rest = c
        .list_scheduled_transfers(authed(
            pb::ListScheduledTransfersRequest { page_size: 1, page_token: page.next_page_token },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rest.schedules[0].schedule_id.as_str(), rest.next_page_token.as_str()),
        (once.schedule_id.as_str(), "")
    );
}

#[tokio::test]
async fn nobody_reaches_a_schedule_or_an_account_that_is_not_theirs() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, Some("100.00")).await;
    let (_, stranger) = h.customer();
    let at = Utc::now() + chrono::Duration::hours(1);

    let theft = create(&h, &stranger, request(&from, &to, "10.00", pb::Cadence::Daily, at)).await.unwrap_err();
    assert_eq!(theft.code(), Code::NotFound, "{theft:?}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE command = 'CreateScheduledTransfer' AND reason = 'NOT_OWNER' AND account_id = $1::uuid",
    )
    .bind(&from)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);

    let s = create(&h, &owner, request(&from, &to, "10.00", pb::Cadence::Daily, at)).await.unwrap();
    assert_eq!(get(&h, &stranger, &s.schedule_id).await.unwrap_err().code(), Code::NotFound);
    let cancel = pb::CancelScheduledTransferRequest { schedule_id: s.schedule_id.clone() };
    let denied = h.client.clone().cancel_scheduled_transfer(authed(cancel, &stranger)).await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound);
    assert_eq!(get(&h, &owner, &s.schedule_id).await.unwrap().state(), pb::ScheduleState::Active);
    let listed = h
        .client
        .clone()
        .list_scheduled_transfers(authed(pb::ListScheduledTransfersRequest::default(), &stranger))
        .await
        .unwrap();
    assert!(listed.into_inner().schedules.is_empty());

    // A client may not claim the keys the scheduler runs occurrences under.
    let pre_empt = pb::TransferRequest {
        from_account_id: from.clone(),
        to_account_id: to.clone(),
        money: usd("10.00"),
        idempotency_key: format!("schedule:{}:0:1", s.schedule_id),
        description: String::new(),
    };
    let refused = h.client.clone().transfer(authed(pre_empt, &owner)).await.unwrap_err();
    assert_eq!(
        (refused.code(), violation_fields(&refused)),
        (Code::InvalidArgument, vec!["idempotency_key".to_owned()])
    );
    assert_eq!(h.balance(&from).await, "100.00");
}

#[tokio::test]
async fn a_bad_request_names_every_field_and_stores_nothing() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, None).await;
    let bad = pb::CreateScheduledTransferRequest {
        from_account_id: from.clone(),
        to_account_id: to.clone(),
        money: usd("1.00"),
        cadence: pb::Cadence::Unspecified.into(),
        time_zone: "Mars/Olympus_Mons".into(),
        start_at: ts(Utc::now() - chrono::Duration::seconds(5)),
        day_of_month: 3,
        idempotency_key: key(),
        ..Default::default()
    };
    let e = create(&h, &owner, bad).await.unwrap_err();
    let mut fields = violation_fields(&e);
    fields.sort();
    assert_eq!(
        (e.code(), fields),
        (Code::InvalidArgument, vec!["cadence".into(), "day_of_month".into(), "start_at".into(), "time_zone".into()])
    );

    let mut ends_first = request(&from, &to, "1.00", pb::Cadence::Weekly, Utc::now() + chrono::Duration::days(2));
    ends_first.end_at = ts(Utc::now() + chrono::Duration::days(1));
    let e = create(&h, &owner, ends_first).await.unwrap_err();
    assert_eq!(violation_fields(&e), ["end_at"]);
    let mut too_far = request(&from, &to, "1.00", pb::Cadence::Once, Utc::now() + chrono::Duration::days(400));
    too_far.day_of_month = 40;
    let e = create(&h, &owner, too_far).await.unwrap_err();
    assert_eq!(violation_fields(&e), ["start_at", "day_of_month"]);
    assert_eq!(h.count("scheduled_transfers").await, 0);
}

#[tokio::test]
async fn the_same_key_gives_the_same_schedule_and_a_different_request_under_it_is_refused() {
    let h = start().await;
    let (owner, from, to) = owner_and_payee(&h, None).await;
    let r = request(&from, &to, "1.00", pb::Cadence::Weekly, Utc::now() + chrono::Duration::days(1));
    let first = create(&h, &owner, r.clone()).await.unwrap();
    let again = create(&h, &owner, r.clone()).await.unwrap();
    assert_eq!(first.schedule_id, again.schedule_id);
    let changed = pb::CreateScheduledTransferRequest { money: usd("2.00"), ..r };
    let e = create(&h, &owner, changed).await.unwrap_err();
    assert_eq!(reason(&e), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(h.count("scheduled_transfers").await, 1);
}
