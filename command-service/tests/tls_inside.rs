//! Plaintext inside. With TLS configured (as the local
//! stack and compose run it), a service speaks gRPC only over mutual TLS with
//! a certificate from the mesh's CA, its side port only over HTTPS, and it
//! takes the keys that verify tokens only from a JWKS served over HTTPS by
//! the holder of a certificate from that CA. Each attack is made against a
//! real command-service; a control shows the legitimate path works.

mod common;

use std::time::Duration;

use bank_proto::v1::account_command_service_client::AccountCommandServiceClient;
use bank_testkit::{MeshCerts, Principal, TestIssuer, nats_url_as};
use common::Harness;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn harness(jwks: TestIssuer, certs: &MeshCerts) -> Harness {
    let tls = certs.tls("command-service");
    Harness::start_with_issuer(jwks, &nats_url_as(Principal::Command), |c| c.tls = Some(tls)).await
}

/// Whether a health check over `channel` (if it connects at all) is answered.
async fn answered(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let call = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
    matches!(tokio::time::timeout(Duration::from_secs(5), call).await, Ok(Ok(_)))
}

async fn over_tls(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
}

#[tokio::test]
async fn only_mutual_tls_with_the_meshs_certificates_reaches_a_service() {
    let certs = MeshCerts::make(&["auth-service", "command-service", "envoy"]);
    let rogue = MeshCerts::make(&["envoy"]);
    let issuer = TestIssuer::start_with_tls(Some(certs.tls("auth-service"))).await.unwrap();
    let h = harness(issuer, &certs).await;
    let addr = h.running.as_ref().unwrap().grpc_addr;

    // Control: Envoy's certificate reaches the service, and a customer's
    // token verifies, so the keys came from the JWKS over HTTPS.
    assert!(answered(over_tls(addr, certs.tls("envoy").grpc_client("localhost")).await).await);
    let (_, ada) = h.customer();
    let mut envoy = AccountCommandServiceClient::new(
        over_tls(addr, certs.tls("envoy").grpc_client("localhost")).await.expect("Envoy connects"),
    );
    let open = bank_proto::v1::OpenAccountRequest {
        r#type: bank_proto::v1::AccountType::Checking as i32,
        currency_code: "USD".into(),
        idempotency_key: common::key(),
    };
    envoy.open_account(bank_testkit::authed(open, &ada)).await.expect("a customer's call through Envoy");

    // Plaintext gRPC is refused.
    assert!(!answered(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await).await);
    // TLS without a client certificate is refused.
    let anonymous =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(certs.ca_pem())).domain_name("localhost");
    assert!(!answered(over_tls(addr, anonymous).await).await);
    // A client certificate from another CA is refused.
    let stranger = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(certs.ca_pem()))
        .identity(Identity::from_pem(
            std::fs::read(rogue.dir.join("envoy.pem")).unwrap(),
            std::fs::read(rogue.dir.join("envoy.key")).unwrap(),
        ))
        .domain_name("localhost");
    assert!(!answered(over_tls(addr, stranger).await).await);
    // A client that trusts only the mesh's CA refuses a server from another
    // CA: a stand-in for the service cannot collect Envoy's calls.
    let wrong_server = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(rogue.ca_pem()))
        .identity(Identity::from_pem(
            std::fs::read(certs.dir.join("envoy.pem")).unwrap(),
            std::fs::read(certs.dir.join("envoy.key")).unwrap(),
        ))
        .domain_name("localhost");
    assert!(!answered(over_tls(addr, wrong_server).await).await);

    // The side port answers over HTTPS only.
    let side = h.running.as_ref().unwrap().http_addr;
    let https = certs.tls("envoy").https_client(Duration::from_secs(3)).unwrap();
    let metrics = https.get(format!("https://localhost:{}/metrics", side.port())).send().await.expect("HTTPS");
    assert!(metrics.status().is_success());
    assert!(reqwest::get(format!("http://{side}/metrics")).await.is_err(), "plain HTTP on the side port");
}

#[tokio::test]
async fn keys_from_an_impostors_jwks_or_over_plain_http_verify_nothing() {
    let certs = MeshCerts::make(&["command-service"]);
    // An impostor serving the JWKS over HTTPS with a certificate its own CA
    // signed for the name the service expects, and its own signing key.
    let rogue = MeshCerts::make(&["auth-service"]);
    let impostor = TestIssuer::start_with_tls(Some(rogue.tls("auth-service"))).await.unwrap();
    let h = harness(impostor, &certs).await;
    let (_, forged) = h.customer();
    let status = refused_open(&h, &forged).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // The JWKS over plain HTTP (where anyone on the path could replace the
    // keys) is not fetched at all.
    let plain = TestIssuer::start().await.unwrap();
    let h = harness(plain, &certs).await;
    let (_, token) = h.customer();
    let status = refused_open(&h, &token).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

async fn refused_open(h: &Harness, token: &str) -> tonic::Status {
    let open = bank_proto::v1::OpenAccountRequest {
        r#type: bank_proto::v1::AccountType::Checking as i32,
        currency_code: "USD".into(),
        idempotency_key: common::key(),
    };
    h.client.clone().open_account(bank_testkit::authed(open, token)).await.expect_err("refused")
}
