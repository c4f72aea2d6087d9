//! Webhooks to real HTTP receivers on loopback: delivered at least once and
//! signed per Standard Webhooks, retried with backoff, dead after the last
//! attempt and replayable, never held up by another endpoint, and never
//! pointed at the mesh itself.

mod common;

use std::time::{Duration, Instant};

use bank_proto::v1 as pb;
use bank_testkit::{assert_eventually, authed};
use common::{Behaviour, Mesh, Receiver, verifies};
use tonic::Code;

async fn endpoint(mesh: &Mesh, token: &str, url: &str) -> Result<pb::WebhookEndpoint, tonic::Status> {
    let req = pb::CreateWebhookEndpointRequest { url: url.into(), description: "test".into() };
    mesh.notify.clone().create_webhook_endpoint(authed(req, token)).await.map(|r| r.into_inner())
}

async fn deliveries(mesh: &Mesh, token: &str, endpoint: &str) -> Vec<pb::WebhookDelivery> {
    let req = pb::ListWebhookDeliveriesRequest { endpoint_id: endpoint.into(), ..Default::default() };
    mesh.notify.clone().list_webhook_deliveries(authed(req, token)).await.unwrap().into_inner().deliveries
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_then_answers_gets_the_event_once_validly_signed() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let receiver = Receiver::start(Behaviour::FailFirst(3)).await;
    let hook = endpoint(&mesh, &ada, &receiver.url).await.unwrap();
    assert!(hook.secret.starts_with("whsec_"));
    mesh.open(&ada).await;

    assert_eventually!(
        receiver.received().iter().any(|r| r.answered == 200),
        Duration::from_secs(15),
        "never delivered"
    );
    let got = receiver.received();
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 500, 500, 200]);
    assert!(got.iter().all(|r| r.id == got[0].id), "one webhook-id for every attempt");
    assert!(got.iter().all(|r| verifies(r, &hook.secret)), "every attempt signed, inside the replay window");
    assert!(!verifies(&got[3], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "another secret does not verify");
    let body: serde_json::Value = serde_json::from_str(&got[3].body).unwrap();
    assert_eq!(body["type"], "notification.account_opened");
    // Backoff: each retry waited longer than the one before (base 100 ms, jittered 50-100%).
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[2] > Duration::from_millis(150), "{gaps:?}");

    let log = deliveries(&mesh, &ada, &hook.endpoint_id).await;
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].state(), log[0].attempts, log[0].last_status), (pb::DeliveryState::Delivered, 4, 200));
    assert_eq!(log[0].message_id, got[0].id);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.received().len(), 4, "nothing after the success");
}

#[tokio::test]
async fn a_receiver_that_hangs_does_not_delay_another_endpoint() {
    let mesh = Mesh::start_with(|c| c.webhooks.timeout = Duration::from_secs(20)).await;
    let (_, ada) = mesh.customer();
    let stuck = Receiver::start(Behaviour::Hang).await;
    let fine = Receiver::start(Behaviour::FailFirst(0)).await;
    endpoint(&mesh, &ada, &stuck.url).await.unwrap();
    endpoint(&mesh, &ada, &fine.url).await.unwrap();
    let account = mesh.open(&ada).await;
    let start = Instant::now();
    mesh.deposit(&account, "10.00").await;
    assert_eventually!(fine.received().len() >= 2, Duration::from_secs(5), "the healthy endpoint waited");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(stuck.received().is_empty(), "the stuck one never answered");
}

#[tokio::test]
async fn a_delivery_dead_after_its_last_attempt_is_replayed_with_the_same_webhook_id() {
    let mesh = Mesh::start_with(|c| c.webhooks.max_attempts = 3).await;
    let (_, ada) = mesh.customer();
    let down = Receiver::start(Behaviour::FailFirst(3)).await;
    let hook = endpoint(&mesh, &ada, &down.url).await.unwrap();
    mesh.open(&ada).await;
    let dead = || async {
        let log = deliveries(&mesh, &ada, &hook.endpoint_id).await;
        log.first().is_some_and(|d| d.state() == pb::DeliveryState::Dead)
    };
    assert_eventually!(dead().await, Duration::from_secs(15), "never dead-lettered");
    let log = deliveries(&mesh, &ada, &hook.endpoint_id).await;
    assert_eq!((log[0].attempts, log[0].last_status, log[0].last_error.as_str()), (3, 500, "answered HTTP 500"));

    // Someone else cannot replay it.
    let (_, mallory) = mesh.customer();
    let replay = pb::ReplayWebhookDeliveryRequest { delivery_id: log[0].delivery_id.clone() };
    let refused = mesh.notify.clone().replay_webhook_delivery(authed(replay.clone(), &mallory)).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let replayed = mesh.notify.clone().replay_webhook_delivery(authed(replay, &ada)).await.unwrap().into_inner();
    assert_eq!(replayed.state(), pb::DeliveryState::Pending);
    assert_eventually!(down.received().len() == 4, Duration::from_secs(10), "the replay never came");
    let got = down.received();
    assert_eq!((got[3].answered, got[3].id.as_str()), (200, got[0].id.as_str()));
    assert!(verifies(&got[3], &hook.secret));
}

#[tokio::test]
async fn after_a_rotation_deliveries_verify_under_the_old_secret_and_the_new() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let receiver = Receiver::start(Behaviour::FailFirst(0)).await;
    let hook = endpoint(&mesh, &ada, &receiver.url).await.unwrap();
    let rotate = pb::RotateWebhookSecretRequest { endpoint_id: hook.endpoint_id.clone() };
    let rotated = mesh.notify.clone().rotate_webhook_secret(authed(rotate, &ada)).await.unwrap().into_inner();
    assert_ne!(rotated.secret, hook.secret);
    mesh.open(&ada).await;
    assert_eventually!(!receiver.received().is_empty(), Duration::from_secs(10), "never delivered");
    let got = &receiver.received()[0];
    assert_eq!(got.signatures.len(), 2);
    assert!(verifies(got, &hook.secret) && verifies(got, &rotated.secret));
    let listed = mesh.notify.clone().list_webhook_endpoints(authed(pb::ListWebhookEndpointsRequest {}, &ada)).await;
    assert!(listed.unwrap().into_inner().endpoints.iter().all(|e| e.secret.is_empty()), "a secret is shown once");
}

/// With the database in hand (a backup, a replica, a stolen password), no
/// endpoint secret is there to read; and a sealed secret copied from one's
/// own endpoint onto another's does not open there: nothing is sent signed
/// with the wrong customer's secret.
#[tokio::test]
async fn a_stolen_database_holds_no_webhook_secret_and_one_copied_across_endpoints_signs_nothing() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    let (_, eve) = mesh.customer();
    let (adas_receiver, eves_receiver) =
        (Receiver::start(Behaviour::FailFirst(0)).await, Receiver::start(Behaviour::FailFirst(0)).await);
    let adas = endpoint(&mesh, &ada, &adas_receiver.url).await.unwrap();
    let eves = endpoint(&mesh, &eve, &eves_receiver.url).await.unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT secret FROM webhook_endpoints ORDER BY id").fetch_all(&mesh.db).await.unwrap();
    assert_eq!(stored.len(), 2);
    for row in &stored {
        assert!(row.starts_with("sealed:v1:"), "{row}");
        assert!(!row.contains(&adas.secret[6..]) && !row.contains(&eves.secret[6..]), "a secret in the clear");
    }

    // Eve copies Ada's sealed secret onto her own endpoint, to be sent
    // webhooks signed under it.
    sqlx::query("UPDATE webhook_endpoints SET secret = (SELECT secret FROM webhook_endpoints WHERE id = $1::uuid) WHERE id = $2::uuid")
        .bind(&adas.endpoint_id)
        .bind(&eves.endpoint_id)
        .execute(&mesh.db)
        .await
        .unwrap();
    mesh.open(&eve).await;
    mesh.open(&ada).await;
    // Ada's webhook comes, signed under her secret; Eve's never comes at all.
    assert_eventually!(!adas_receiver.received().is_empty(), Duration::from_secs(10), "Ada's never delivered");
    assert!(verifies(&adas_receiver.received()[0], &adas.secret));
    assert_eventually!(
        deliveries(&mesh, &eve, &eves.endpoint_id).await.first().is_some_and(|d| d.attempts >= 2),
        Duration::from_secs(10),
        "Eve's delivery was not even tried"
    );
    assert!(eves_receiver.received().is_empty(), "sent signed under another endpoint's secret");
    let log = deliveries(&mesh, &eve, &eves.endpoint_id).await;
    assert_eq!(log[0].last_error, "the endpoint's secret could not be read");
}

/// A new endpoint receives every notification from then on: a customer who
/// signs in with a second factor adds one only with a recent code.
#[tokio::test]
async fn adding_an_endpoint_needs_a_recent_second_factor_from_a_customer_who_has_one() {
    let mesh = Mesh::start().await;
    let receiver = Receiver::start(Behaviour::FailFirst(0)).await;
    let ada = uuid::Uuid::now_v7();
    let stale = mesh.issuer.customer_with_second_factor(ada, Duration::from_secs(600));
    let refused = endpoint(&mesh, &stale, &receiver.url).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("second factor"), "{}", refused.message());
    let listed = mesh.notify.clone().list_webhook_endpoints(authed(pb::ListWebhookEndpointsRequest {}, &stale)).await;
    assert!(listed.unwrap().into_inner().endpoints.is_empty(), "nothing was added");
    let fresh = mesh.issuer.customer_with_second_factor(ada, Duration::from_secs(30));
    endpoint(&mesh, &fresh, &receiver.url).await.unwrap();
}

#[tokio::test]
async fn a_webhook_pointing_at_the_mesh_or_a_private_address_is_refused() {
    let mesh = Mesh::start().await;
    let (_, ada) = mesh.customer();
    for url in [
        format!("http://127.0.0.1:{}/bank.v1.AccountCommandService/Deposit", mesh.command_grpc.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        "https://[fd00::1]/hook".to_owned(),
        "http://user:secret@127.0.0.1:8000/hook".to_owned(),
        "not a url".to_owned(),
    ] {
        let refused = endpoint(&mesh, &ada, &url).await.unwrap_err();
        use tonic_types::StatusExt;
        let fields: Vec<String> =
            refused.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
        assert_eq!((refused.code(), fields), (Code::InvalidArgument, vec!["url".to_owned()]), "{url}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints").fetch_one(&mesh.db).await.unwrap();
    assert_eq!(count, 0);
}
