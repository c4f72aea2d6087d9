//! The in-app feed and balance alerts, made from the real event stream of a
//! real command-service: each once, for the accounts' owners only.

mod common;

use std::time::Duration;

use bank_proto::v1 as pb;
use bank_testkit::{assert_eventually, authed};
use common::{Mesh, usd};
use futures::StreamExt;
use tonic::Code;

#[tokio::test]
async fn money_that_moves_tells_each_owner_once_in_their_own_feed() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let (_, bob) = mesh.customer();
    let a = mesh.open(&ada).await;
    let b = mesh.open(&bob).await;
    mesh.deposit(&a, "100.00").await;
    mesh.transfer(&ada, &a, &b, "30.00").await;

    let feed = mesh.feed_of_at_least(&ada, 3).await;
    let titles: Vec<&str> = feed.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(titles, ["Transfer sent", "Money in", "Account opened"], "newest first");
    assert_eq!(feed[0].body, format!("30.00 USD sent to {b}. Balance: 70.00 USD."));
    assert!(feed.iter().all(|n| n.account_id == a && n.read_at.is_none()));
    let bobs = mesh.feed_of_at_least(&bob, 2).await;
    assert_eq!(bobs[0].title, "Transfer received");
    let (_, stranger) = mesh.customer();
    assert!(mesh.feed(&stranger).await.is_empty());

    // Nobody marks another's as read.
    let mut c = mesh.notify.clone();
    let theirs = pb::MarkNotificationsReadRequest {
        notification_ids: vec![feed[0].notification_id.clone()],
        up_to_notification_id: String::new(),
    };
    assert_eq!(c.mark_notifications_read(authed(theirs.clone(), &bob)).await.unwrap().into_inner().marked, 0);
    let all = pb::MarkNotificationsReadRequest {
        notification_ids: vec![],
        up_to_notification_id: feed[0].notification_id.clone(),
    };
    assert_eq!(c.mark_notifications_read(authed(all.clone(), &ada)).await.unwrap().into_inner().marked, 3);
    assert_eq!(c.mark_notifications_read(authed(all, &ada)).await.unwrap().into_inner().marked, 0, "twice is once");
    let unread = pb::ListNotificationsRequest { unread_only: true, ..Default::default() };
    assert!(c.list_notifications(authed(unread, &ada)).await.unwrap().into_inner().notifications.is_empty());
}

/// Creates the alert once notification-service knows the account (it learns
/// of it from the stream).
async fn alert(
    mesh: &Mesh,
    token: &str,
    account: &str,
    direction: pb::AlertDirection,
    amount: &str,
) -> pb::BalanceAlert {
    let req = pb::CreateBalanceAlertRequest {
        account_id: account.into(),
        direction: direction.into(),
        threshold: usd(amount),
    };
    let mut made = None;
    assert_eventually!(
        match mesh.notify.clone().create_balance_alert(authed(req.clone(), token)).await {
            Ok(a) => {
                made = Some(a.into_inner());
                true
            }
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => panic!("{s:?}"),
        },
        Duration::from_secs(15),
        "the account never became known"
    );
    made.unwrap()
}

#[tokio::test]
async fn a_balance_alert_fires_once_per_crossing_not_once_per_event_past_it() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let a = mesh.open(&ada).await;
    let b = mesh.open(&mesh.customer().1).await;
    mesh.deposit(&a, "100.00").await;
    mesh.feed_of_at_least(&ada, 2).await;
    let low = alert(&mesh, &ada, &a, pb::AlertDirection::Below, "50.00").await;

    // 100 -> 70 -> 40 (crosses) -> 30 -> 130 (back) -> 40 (crosses again).
    for amount in ["30.00", "30.00", "10.00"] {
        mesh.transfer(&ada, &a, &b, amount).await;
    }
    mesh.deposit(&a, "100.00").await;
    mesh.transfer(&ada, &a, &b, "90.00").await;
    let feed = mesh.feed_of_at_least(&ada, 2 + 5 + 2).await;
    let alerts: Vec<&pb::Notification> = feed.iter().filter(|n| n.kind == "balance_alert").collect();
    assert_eq!(alerts.len(), 2, "{feed:#?}");
    assert_eq!(alerts[0].title, "Balance below 50.00 USD");
    assert!(alerts[1].body.contains("is 40.00 USD, under your alert at 50.00 USD"), "{}", alerts[1].body);

    let listed = mesh.notify.clone().list_balance_alerts(authed(pb::ListBalanceAlertsRequest {}, &ada)).await.unwrap();
    let listed = listed.into_inner().alerts;
    assert_eq!((listed.len(), listed[0].alert_id.as_str(), listed[0].fired), (1, low.alert_id.as_str(), 2));
    assert_eq!(listed[0].threshold, usd("50.00"));
}

#[tokio::test]
async fn nobody_sets_an_alert_on_an_account_that_is_not_theirs_and_bad_input_is_named() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let a = mesh.open(&ada).await;
    mesh.feed_of_at_least(&ada, 1).await;
    let (_, mallory) = mesh.customer();
    let theirs = pb::CreateBalanceAlertRequest {
        account_id: a.clone(),
        direction: pb::AlertDirection::Below.into(),
        threshold: usd("10.00"),
    };
    let refused = mesh.notify.clone().create_balance_alert(authed(theirs, &mallory)).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let bad = pb::CreateBalanceAlertRequest { account_id: "nope".into(), direction: 0, threshold: usd("1.001") };
    let refused = mesh.notify.clone().create_balance_alert(authed(bad, &ada)).await.unwrap_err();
    use tonic_types::StatusExt;
    let mut fields: Vec<String> =
        refused.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    fields.sort();
    assert_eq!(
        (refused.code(), fields),
        (Code::InvalidArgument, vec!["account_id".into(), "direction".into(), "threshold.amount".into()])
    );
    let eur = pb::CreateBalanceAlertRequest {
        account_id: a,
        direction: pb::AlertDirection::Above.into(),
        threshold: Some(pb::Money { currency_code: "EUR".into(), amount: "10.00".into() }),
    };
    let refused = mesh.notify.clone().create_balance_alert(authed(eur, &ada)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM balance_alerts").fetch_one(&mesh.db).await.unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn stopped_under_load_and_restarted_it_catches_up_and_makes_every_notification_exactly_once() {
    let mut mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let a = mesh.open(&ada).await;
    let b = mesh.open(&mesh.customer().1).await;
    mesh.deposit(&a, "1000.00").await;
    mesh.feed_of_at_least(&ada, 2).await;
    for i in 0..40 {
        if i == 10 {
            mesh.stop_notifications().await;
        }
        mesh.transfer(&ada, &a, &b, "1.00").await;
    }
    mesh.start_notifications().await;
    let feed = mesh.feed_of_at_least(&ada, 42).await;
    assert_eq!(feed.len(), 42);
    // And delivered all over again, applied from scratch (the consumer and
    // the heads forgotten): nothing is made twice.
    let js = async_nats::jetstream::new(bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap());
    let stream = js.get_stream(&mesh.notify_config.stream).await.unwrap();
    mesh.stop_notifications().await;
    stream.delete_consumer(notification_service::CONSUMER).await.unwrap();
    sqlx::query("DELETE FROM watched_accounts").execute(&mesh.db).await.unwrap();
    mesh.start_notifications().await;
    let caught_up = || async {
        let heads: Option<i64> = sqlx::query_scalar("SELECT version FROM watched_accounts WHERE account_id = $1::uuid")
            .bind(&a)
            .fetch_optional(&mesh.db)
            .await
            .unwrap();
        heads == Some(42)
    };
    assert_eventually!(caught_up().await, Duration::from_secs(15), "applied again from the start");
    assert_eq!(mesh.feed(&ada).await.len(), 42);
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(&mesh.db).await.unwrap();
    assert_eq!(made, 42 + 1 + 40, "ada's 42 and the payee's account_opened and 40 transfers received");
}

#[tokio::test]
async fn a_watch_gets_each_new_notification_as_it_is_made() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let a = mesh.open(&ada).await;
    mesh.feed_of_at_least(&ada, 1).await;
    let mut watch = mesh
        .notify
        .clone()
        .watch_notifications(authed(pb::WatchNotificationsRequest::default(), &ada))
        .await
        .unwrap()
        .into_inner();
    mesh.deposit(&a, "5.00").await;
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((next.title.as_str(), next.account_id.as_str()), ("Money in", a.as_str()));
}

#[tokio::test]
async fn an_email_reaches_the_mail_server_for_the_owner_who_asked_for_it_and_nobody_else() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let (_, bob) = mesh.customer();
    let ada_address = format!("ada-{}@example.test", uuid::Uuid::new_v4().simple());
    let bob_address = format!("bob-{}@example.test", uuid::Uuid::new_v4().simple());
    let mut c = mesh.notify.clone();
    let set =
        |email: &str, email_enabled: bool| pb::SetNotificationPreferencesRequest { email: email.into(), email_enabled };
    c.set_notification_preferences(authed(set(&ada_address, true), &ada)).await.unwrap();
    c.set_notification_preferences(authed(set(&bob_address, false), &bob)).await.unwrap();
    let got = c.get_notification_preferences(authed(pb::GetNotificationPreferencesRequest {}, &ada)).await.unwrap();
    assert_eq!(got.into_inner(), pb::NotificationPreferences { email: ada_address.clone(), email_enabled: true });

    let a = mesh.open(&ada).await;
    let b = mesh.open(&bob).await;
    mesh.deposit(&a, "10.00").await;
    mesh.transfer(&ada, &a, &b, "4.00").await;
    assert_eventually!(common::mail_to(&ada_address).len() >= 3, Duration::from_secs(15), "ada's email never came");
    let mail = common::mail_to(&ada_address);
    assert_eq!(mail.len(), 3, "one per notification");
    let money_in = mail.iter().find(|m| m.contains("Subject: bankmesh: Money in")).expect("the deposit's email");
    assert!(money_in.lines().any(|l| l == format!("To: {ada_address}")), "{money_in}");
    assert!(money_in.contains("10.00 USD deposited. Balance: 10.00 USD."), "{money_in}");
    assert!(mail.iter().any(|m| m.contains("Subject: bankmesh: Transfer sent")));
    // Bob has an address but did not enable email: his transfer came in silently.
    assert!(mesh.feed_of_at_least(&bob, 2).await.iter().any(|n| n.title == "Transfer received"));
    assert!(common::mail_to(&bob_address).is_empty());

    // An address mail cannot go to is refused, and nothing changes.
    let bad = c.set_notification_preferences(authed(set("ada@", true), &ada)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let none = c.set_notification_preferences(authed(set("", true), &ada)).await.unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    let kept = c.get_notification_preferences(authed(pb::GetNotificationPreferencesRequest {}, &ada)).await.unwrap();
    assert_eq!(kept.into_inner().email, ada_address);
}

#[tokio::test]
async fn a_refused_scheduled_transfer_tells_its_owner_why_on_every_attempt_and_when_it_gives_up() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let (_, bob) = mesh.customer();
    let a = mesh.open(&ada).await;
    let b = mesh.open(&bob).await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    let create = pb::CreateScheduledTransferRequest {
        from_account_id: a.clone(),
        to_account_id: b.clone(),
        money: usd("25.00"),
        description: "rent".into(),
        cadence: pb::Cadence::Once.into(),
        start_at: Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }),
        idempotency_key: common::key(),
        ..Default::default()
    };
    mesh.command.clone().create_scheduled_transfer(authed(create, &ada)).await.unwrap();

    // Account opened, then three refused attempts (the policy's default).
    let feed = mesh.feed_of_at_least(&ada, 4).await;
    let refused: Vec<&pb::Notification> = feed.iter().filter(|n| n.kind == "schedule_refused").collect();
    assert_eq!(refused.len(), 3, "{feed:?}");
    assert!(refused.iter().all(|n| n.title == "Scheduled transfer refused" && n.account_id == a));
    let prefix = format!("Your scheduled transfer of 25.00 USD to {b} was refused (insufficient funds, attempt");
    assert!(refused.iter().all(|n| n.body.starts_with(&prefix)), "{refused:?}");
    assert!(refused[0].body.ends_with("attempt 3). That was the last attempt: this payment will not be made."));
    assert!(refused[1].body.contains("attempt 2). It will be tried again at "), "{}", refused[1].body);
    // The payee hears nothing of a payment that never came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bobs = mesh.feed(&bob).await;
    assert_eq!(bobs.iter().map(|n| n.kind.as_str()).collect::<Vec<_>>(), ["account_opened"]);
    assert_eq!(mesh.feed(&ada).await.len(), 4, "each attempt told once");
}

/// A customer's standing as auth-service records a change of it.
fn standing(user: uuid::Uuid, (previous, status): (&str, &str), seq: i64) -> bank_platform::standing::Standing {
    bank_platform::standing::Standing {
        user_id: user,
        status: status.into(),
        roles: vec!["customer".into()],
        seq,
        previous_status: Some(previous.into()),
    }
}

/// Publishes a signed standing on the feed (the test plays auth-service, as
/// the NATS admin).
async fn publish_standing(mesh: &Mesh, user: uuid::Uuid, jws: String) {
    let subject = format!("{}.{user}", mesh.notify_config.standing_feed.subject_prefix);
    bank_testkit::publish_stored(&subject, jws.into_bytes()).await;
}

#[tokio::test]
async fn a_kyc_approval_a_suspension_and_a_reinstatement_are_told_once_each_and_a_forged_one_never() {
    let mesh = Mesh::start().await;
    let (ada, ada_token) = mesh.customer();
    let signed = |previous_and_now, seq| mesh.issuer.sign_standing(&standing(ada, previous_and_now, seq));
    publish_standing(&mesh, ada, signed(("PENDING_KYC", "ACTIVE"), 10)).await;
    // Delivered again (a feed republished after a crash): still one.
    publish_standing(&mesh, ada, signed(("PENDING_KYC", "ACTIVE"), 10)).await;
    // Signed by someone else than auth-service: never told.
    let forger = bank_platform::auth::TokenSigner::generate();
    let forged = forger.sign_standing(&standing(ada, ("ACTIVE", "SUSPENDED"), 11)).unwrap();
    publish_standing(&mesh, ada, forged).await;
    // A change of roles alone says nothing to the customer.
    publish_standing(&mesh, ada, signed(("ACTIVE", "ACTIVE"), 12)).await;
    publish_standing(&mesh, ada, signed(("ACTIVE", "SUSPENDED"), 13)).await;
    publish_standing(&mesh, ada, signed(("SUSPENDED", "ACTIVE"), 14)).await;

    let feed = mesh.feed_of_at_least(&ada_token, 3).await;
    let said: Vec<(&str, &str)> = feed.iter().map(|n| (n.kind.as_str(), n.title.as_str())).collect();
    assert_eq!(
        said,
        [
            ("access_restored", "Access restored"),
            ("access_suspended", "Access suspended"),
            ("kyc_approved", "Identity verified")
        ],
        "newest first"
    );
    assert!(feed.iter().all(|n| n.account_id.is_empty()), "about the user, not an account");
    assert_eq!(feed[2].body, "Your identity is verified: you can now open accounts and move money.");
    // Nothing more comes of the duplicate or the forgery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mesh.feed(&ada_token).await.len(), 3);
    let (_, bob) = mesh.customer();
    assert!(mesh.feed(&bob).await.is_empty(), "told to the user it is about only");
}

/// The month's statement for every customer account, fetched signed from
/// query-service as notification-service's own principal and delivered once:
/// in the feed and by email, the signed statement inside, verifying offline.
#[tokio::test]
async fn each_months_statement_is_delivered_once_signed_and_verifies_offline() {
    let mesh = Mesh::start_with_read_side(|_| {}).await;
    let (_, ada) = mesh.customer();
    let (_, bob) = mesh.customer();
    let address = format!("ada-{}@example.test", uuid::Uuid::new_v4().simple());
    let prefs = pb::SetNotificationPreferencesRequest { email: address.clone(), email_enabled: true };
    mesh.notify.clone().set_notification_preferences(authed(prefs, &ada)).await.unwrap();
    let a = mesh.open(&ada).await;
    let b = mesh.open(&bob).await;
    mesh.deposit(&a, "100.00").await;
    mesh.transfer(&ada, &a, &b, "30.00").await;

    let statements = |feed: Vec<pb::Notification>| -> Vec<pb::Notification> {
        feed.into_iter().filter(|n| n.kind == "statement").collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mine = loop {
        // Until the projector has the transfer, a statement could be made
        // without it: the test waits for the one that has it.
        let made = statements(mesh.feed(&ada).await);
        if !made.is_empty() {
            break made;
        }
        assert!(std::time::Instant::now() < deadline, "no statement came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(mine.len(), 1);
    let s = &mine[0];
    assert!(s.title.starts_with("Statement for "), "{}", s.title);
    assert_eq!(s.account_id, a);
    let jws = s.body.lines().last().unwrap();
    let signer = &mesh.query_config.as_ref().unwrap().statement_signer;
    let keys: bank_statement::JwkSet =
        serde_json::from_value(bank_platform::auth::jwks(std::slice::from_ref(signer))).unwrap();
    let checked = bank_statement::check_document(jws, &keys).expect("the delivered statement verifies");
    assert_eq!(checked.account_id.to_string(), a);
    let (opening, closing) = (&checked.opening_balance, &checked.closing_balance);
    assert!(
        s.body.contains(&format!("opening {opening} {}, ", checked.currency))
            && s.body.contains(&format!("closing {closing} {}, {} entries", checked.currency, checked.entries.len())),
        "{}",
        s.body
    );
    let mut changed = jws.to_owned().into_bytes();
    let i = changed.len() / 2;
    changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
    assert!(bank_statement::check_document(std::str::from_utf8(&changed).unwrap(), &keys).is_err());

    // By email too, the signed statement inside.
    assert_eventually!(
        common::mail_to(&address).iter().any(|m| m.contains("Subject: bankmesh: Statement for ")),
        Duration::from_secs(15),
        "the statement's email never came"
    );
    // Bob gets his own; and however many passes run, each once.
    assert_eventually!(!statements(mesh.feed(&bob).await).is_empty(), Duration::from_secs(15), "bob's statement");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(statements(mesh.feed(&ada).await).len(), 1, "once per account and month");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM monthly_statements").fetch_one(&mesh.db).await.unwrap();
    assert_eq!(kept, 2);

    // query-service lets that principal read any account's statement; any
    // other service principal, none but its own.
    let mut query = pb::account_query_service_client::AccountQueryServiceClient::connect(format!(
        "http://{}",
        mesh.query_grpc.unwrap()
    ))
    .await
    .unwrap();
    let ask = |token: &str| {
        let now = chrono::Utc::now();
        let at = |t: chrono::DateTime<chrono::Utc>| Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 });
        authed(
            pb::GetStatementRequest {
                account_id: a.clone(),
                from_time: at(now - chrono::Duration::days(1)),
                to_time: at(now),
                ..Default::default()
            },
            token,
        )
    };
    let other = mesh.issuer.service(bank_platform::auth::service_subject("risk-service"));
    assert_eq!(query.get_statement(ask(&other)).await.unwrap_err().code(), Code::NotFound);
    let (_, stranger) = mesh.customer();
    assert_eq!(query.get_statement(ask(&stranger)).await.unwrap_err().code(), Code::NotFound);
    let reader = mesh.issuer.service(bank_platform::auth::service_subject("notification-service"));
    query.get_statement(ask(&reader)).await.unwrap();
}
