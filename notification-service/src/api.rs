//! The gRPC adapter: the caller from the verified token, every request on
//! the caller's own notifications, alerts and endpoints only (someone else's
//! is NOT_FOUND), bad input named field by field.

use std::{pin::Pin, time::Duration};

use bank_domain::{Currency, InputError, parse_amount};
use bank_platform::{
    CancellationToken,
    auth::{Caller, caller},
    status,
};
use bank_proto::v1::{self as pb, notification_service_server::NotificationService};
use chrono::{DateTime, Utc};
use futures::Stream;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    rules::{Alert, Direction},
    store::NEWS_CHANNEL,
    webhook::{Guard, new_secret},
};
use bank_platform::sealed::Secrets;

pub struct NotificationApi {
    pool: PgPool,
    guard: Guard,
    /// How endpoint secrets are stored (sealed under the service's key).
    secrets: Secrets,
    /// Users with new notifications, from every instance (Postgres NOTIFY).
    news: broadcast::Sender<Uuid>,
}

impl NotificationApi {
    pub fn new(pool: PgPool, guard: Guard, secrets: Secrets, news: broadcast::Sender<Uuid>) -> Self {
        Self { pool, guard, secrets, news }
    }
}

/// Endpoints one user may have.
const MAX_ENDPOINTS: i64 = 10;
/// Alerts one user may have.
const MAX_ALERTS: i64 = 50;
/// How long a rotated-out secret still signs.
const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// Largest threshold an alert takes.
const MAX_THRESHOLD: Decimal = Decimal::from_parts(1_569_325_056, 23_283_064, 0, false, 0); // 10^17

type Result<T> = std::result::Result<Response<T>, Status>;

fn invalid(field: &str, why: impl Into<String>) -> Status {
    status::invalid_argument(&[InputError::new(field, why.into())])
}

fn id(field: &str, text: &str) -> std::result::Result<Uuid, Status> {
    if text.is_empty() {
        return Err(invalid(field, "is required"));
    }
    Uuid::try_parse(text).map_err(|_| invalid(field, "must be a UUID"))
}

fn page_size(size: i32) -> std::result::Result<i64, Status> {
    match size {
        0 => Ok(20),
        1..=100 => Ok(i64::from(size)),
        _ => Err(invalid("page_size", "must be 0-100")),
    }
}

fn page_token(token: &str) -> std::result::Result<Option<Uuid>, Status> {
    if token.is_empty() { Ok(None) } else { id("page_token", token).map(Some) }
}

fn db(e: sqlx::Error) -> Status {
    status::from_db(&e)
}

fn ts(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

struct NotificationRow {
    id: Uuid,
    kind: String,
    title: String,
    body: String,
    account_id: Option<Uuid>,
    event_id: Uuid,
    created_at: DateTime<Utc>,
    read_at: Option<DateTime<Utc>>,
}

impl From<NotificationRow> for pb::Notification {
    fn from(n: NotificationRow) -> Self {
        pb::Notification {
            notification_id: n.id.to_string(),
            kind: n.kind,
            title: n.title,
            body: n.body,
            account_id: n.account_id.map(|a| a.to_string()).unwrap_or_default(),
            event_id: n.event_id.to_string(),
            created_at: ts(n.created_at),
            read_at: n.read_at.and_then(ts),
        }
    }
}

struct EndpointRow {
    id: Uuid,
    url: String,
    description: String,
    created_at: DateTime<Utc>,
}

fn endpoint(e: EndpointRow, secret: String) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        endpoint_id: e.id.to_string(),
        url: e.url,
        description: e.description,
        secret,
        created_at: ts(e.created_at),
    }
}

struct DeliveryRow {
    id: Uuid,
    endpoint_id: Uuid,
    notification_id: Uuid,
    state: String,
    attempts: i32,
    last_status: Option<i32>,
    last_error: Option<String>,
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl From<DeliveryRow> for pb::WebhookDelivery {
    fn from(d: DeliveryRow) -> Self {
        let state = match d.state.as_str() {
            "PENDING" => pb::DeliveryState::Pending,
            "DELIVERED" => pb::DeliveryState::Delivered,
            _ => pb::DeliveryState::Dead,
        };
        pb::WebhookDelivery {
            delivery_id: d.id.to_string(),
            endpoint_id: d.endpoint_id.to_string(),
            message_id: format!("msg_{}", d.notification_id.simple()),
            notification_id: d.notification_id.to_string(),
            state: state.into(),
            attempts: d.attempts,
            last_status: d.last_status.unwrap_or_default(),
            last_error: d.last_error.unwrap_or_default(),
            next_attempt_at: if state == pb::DeliveryState::Pending { ts(d.next_attempt_at) } else { None },
            created_at: ts(d.created_at),
            delivered_at: d.delivered_at.and_then(ts),
        }
    }
}

impl NotificationApi {
    /// The caller's endpoint `id` (not deleted); anyone else's is not found.
    async fn own_endpoint(&self, caller: &Caller, id: Uuid) -> std::result::Result<EndpointRow, Status> {
        sqlx::query_as!(
            EndpointRow,
            "SELECT id, url, description, created_at FROM webhook_endpoints
             WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
            id,
            caller.user_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| status::not_found("webhook endpoint"))
    }

    /// The caller's notifications after `after`, oldest first.
    async fn newer(&self, user: Uuid, after: Option<Uuid>) -> std::result::Result<Vec<pb::Notification>, Status> {
        let rows = sqlx::query_as!(
            NotificationRow,
            "SELECT id, kind, title, body, account_id, event_id, created_at, read_at FROM notifications
             WHERE user_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT 100",
            user,
            after
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

/// Relays Postgres notices of new notifications to this instance's watchers.
pub async fn listen_for_news(
    pool: PgPool,
    news: broadcast::Sender<Uuid>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        let listened = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(NEWS_CHANNEL).await?;
            loop {
                let notice = listener.recv().await?;
                if let Ok(user) = Uuid::try_parse(notice.payload()) {
                    let _ = news.send(user);
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = listened => if let Err(e) = r {
                tracing::warn!(error = %e, "listening for new notifications failed; again shortly");
            },
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// How often a watch looks for new notifications without a notice (one can
/// be missed while the listener reconnects).
const WATCH_RECHECK: Duration = Duration::from_secs(2);

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn get_notification_preferences(
        &self,
        req: Request<pb::GetNotificationPreferencesRequest>,
    ) -> Result<pb::NotificationPreferences> {
        let caller = caller(&req)?;
        let row = sqlx::query!(
            "SELECT email, email_enabled FROM notification_preferences WHERE user_id = $1",
            caller.user_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(Response::new(row.map_or_else(Default::default, |r| pb::NotificationPreferences {
            email: r.email.unwrap_or_default(),
            email_enabled: r.email_enabled,
        })))
    }

    async fn set_notification_preferences(
        &self,
        req: Request<pb::SetNotificationPreferencesRequest>,
    ) -> Result<pb::NotificationPreferences> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let email = match r.email.as_str() {
            "" if r.email_enabled => return Err(invalid("email", "is required to enable email")),
            "" => None,
            text => Some(crate::email::address(text).map_err(|why| invalid("email", why))?.to_string()),
        };
        sqlx::query!(
            "INSERT INTO notification_preferences (user_id, email, email_enabled, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (user_id) DO UPDATE
             SET email = excluded.email, email_enabled = excluded.email_enabled, updated_at = excluded.updated_at",
            caller.user_id,
            email,
            r.email_enabled
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(Response::new(pb::NotificationPreferences {
            email: email.unwrap_or_default(),
            email_enabled: r.email_enabled,
        }))
    }

    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Result<pb::ListNotificationsResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (size, after) = (page_size(r.page_size)?, page_token(&r.page_token)?);
        let rows = sqlx::query_as!(
            NotificationRow,
            "SELECT id, kind, title, body, account_id, event_id, created_at, read_at FROM notifications
             WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2) AND (NOT $3 OR read_at IS NULL)
             ORDER BY id DESC LIMIT $4",
            caller.user_id,
            after,
            r.unread_only,
            size + 1
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let more = rows.len() as i64 > size;
        let page: Vec<pb::Notification> = rows.into_iter().take(size as usize).map(Into::into).collect();
        let next_page_token =
            if more { page.last().map(|n| n.notification_id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListNotificationsResponse { notifications: page, next_page_token }))
    }

    async fn mark_notifications_read(
        &self,
        req: Request<pb::MarkNotificationsReadRequest>,
    ) -> Result<pb::MarkNotificationsReadResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        if r.notification_ids.len() > 100 {
            return Err(invalid("notification_ids", "at most 100"));
        }
        let ids: Vec<Uuid> = r
            .notification_ids
            .iter()
            .enumerate()
            .map(|(i, t)| id(&format!("notification_ids[{i}]"), t))
            .collect::<std::result::Result<_, _>>()?;
        let up_to =
            page_token(&r.up_to_notification_id).map_err(|_| invalid("up_to_notification_id", "must be a UUID"))?;
        if ids.is_empty() && up_to.is_none() {
            return Err(invalid("notification_ids", "name notifications, or give up_to_notification_id"));
        }
        let marked = sqlx::query!(
            "UPDATE notifications SET read_at = now()
             WHERE user_id = $1 AND read_at IS NULL AND (id = ANY($2) OR ($3::uuid IS NOT NULL AND id <= $3))",
            caller.user_id,
            &ids,
            up_to
        )
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(Response::new(pb::MarkNotificationsReadResponse { marked: marked as i64 }))
    }

    type WatchNotificationsStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::Notification, Status>> + Send>>;

    async fn watch_notifications(
        &self,
        req: Request<pb::WatchNotificationsRequest>,
    ) -> Result<Self::WatchNotificationsStream> {
        let caller = caller(&req)?;
        let mut last = page_token(&req.get_ref().after_notification_id)
            .map_err(|_| invalid("after_notification_id", "must be a UUID"))?;
        // Subscribed before the first read: nothing made in between is missed.
        let mut news = self.news.subscribe();
        if last.is_none() {
            last = sqlx::query_scalar!(
                "SELECT id FROM notifications WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
                caller.user_id
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        }
        let (tx, rx) = mpsc::channel(64);
        let api = NotificationApi {
            pool: self.pool.clone(),
            guard: self.guard.clone(),
            secrets: self.secrets.clone(),
            news: self.news.clone(),
        };
        let token_ends = caller.expires_at.and_then(|at| DateTime::from_timestamp(at, 0));
        tokio::spawn(async move {
            loop {
                match api.newer(caller.user_id, last).await {
                    Ok(fresh) => {
                        for n in fresh {
                            last = Uuid::try_parse(&n.notification_id).ok();
                            if tx.send(Ok(n)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                let expiry = token_ends.map(|t| (t - Utc::now()).to_std().unwrap_or_default()).unwrap_or(Duration::MAX);
                tokio::select! {
                    _ = tx.closed() => return,
                    () = tokio::time::sleep(expiry) => {
                        let _ = tx.send(Err(status::unauthenticated("the access token expired; open a new stream with a fresh one"))).await;
                        return;
                    }
                    () = tokio::time::sleep(WATCH_RECHECK) => {}
                    n = news.recv() => match n {
                        Ok(user) if user != caller.user_id => continue,
                        _ => {}
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn create_balance_alert(&self, req: Request<pb::CreateBalanceAlertRequest>) -> Result<pb::BalanceAlert> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut violations = Vec::new();
        let account = id("account_id", &r.account_id).map_err(|_| ()).ok();
        if account.is_none() {
            violations.push(InputError::new("account_id", "must be a UUID"));
        }
        let direction = match pb::AlertDirection::try_from(r.direction) {
            Ok(pb::AlertDirection::Below) => Some(Direction::Below),
            Ok(pb::AlertDirection::Above) => Some(Direction::Above),
            _ => {
                violations.push(InputError::new("direction", "must be ALERT_DIRECTION_BELOW or ALERT_DIRECTION_ABOVE"));
                None
            }
        };
        let threshold = match &r.threshold {
            None => {
                violations.push(InputError::new("threshold", "is required"));
                None
            }
            Some(m) => match Currency::from_code(&m.currency_code) {
                Err(e) => {
                    violations.push(InputError::new("threshold.currency_code", e.description));
                    None
                }
                Ok(c) => match parse_amount("threshold.amount", &m.amount, c, MAX_THRESHOLD) {
                    Ok(amount) => Some((c, amount)),
                    Err(e) => {
                        violations.push(e);
                        None
                    }
                },
            },
        };
        let (Some(account), Some(direction), Some((currency, threshold)), true) =
            (account, direction, threshold, violations.is_empty())
        else {
            return Err(status::invalid_argument(&violations));
        };
        let watched = sqlx::query!(
            "SELECT currency, balance FROM watched_accounts WHERE account_id = $1 AND owner_id = $2",
            account,
            caller.user_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| status::not_found("account"))?;
        if watched.currency != currency.code() {
            return Err(invalid(
                "threshold.currency_code",
                format!("must be the account's currency, {}", watched.currency),
            ));
        }
        let count = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM balance_alerts WHERE user_id = $1 AND deleted_at IS NULL"#,
            caller.user_id
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        if count >= MAX_ALERTS {
            return Err(status::with_reason(
                tonic::Code::ResourceExhausted,
                "TOO_MANY_ALERTS",
                format!("at most {MAX_ALERTS} alerts"),
            ));
        }
        let beyond = Alert { direction, threshold, beyond: false }.is_beyond(watched.balance);
        let (alert_id, now) = (Uuid::now_v7(), Utc::now());
        sqlx::query!(
            "INSERT INTO balance_alerts (id, user_id, account_id, direction, threshold, beyond, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            alert_id,
            caller.user_id,
            account,
            direction.as_str(),
            threshold,
            beyond,
            now
        )
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(Response::new(pb::BalanceAlert {
            alert_id: alert_id.to_string(),
            account_id: account.to_string(),
            direction: r.direction,
            threshold: r.threshold,
            created_at: ts(now),
            fired: 0,
        }))
    }

    async fn list_balance_alerts(
        &self,
        req: Request<pb::ListBalanceAlertsRequest>,
    ) -> Result<pb::ListBalanceAlertsResponse> {
        let caller = caller(&req)?;
        let rows = sqlx::query!(
            "SELECT a.id, a.account_id, a.direction, a.threshold, a.created_at, a.fired, w.currency
             FROM balance_alerts a JOIN watched_accounts w USING (account_id)
             WHERE a.user_id = $1 AND a.deleted_at IS NULL ORDER BY a.id",
            caller.user_id
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let alerts = rows
            .into_iter()
            .map(|a| pb::BalanceAlert {
                alert_id: a.id.to_string(),
                account_id: a.account_id.to_string(),
                direction: match a.direction.as_str() {
                    "BELOW" => pb::AlertDirection::Below,
                    _ => pb::AlertDirection::Above,
                }
                .into(),
                threshold: Some(pb::Money {
                    currency_code: a.currency.clone(),
                    amount: Currency::from_code(&a.currency)
                        .map(|c| bank_domain::format_amount(a.threshold, c))
                        .unwrap_or_else(|_| a.threshold.normalize().to_string()),
                }),
                created_at: ts(a.created_at),
                fired: a.fired,
            })
            .collect();
        Ok(Response::new(pb::ListBalanceAlertsResponse { alerts }))
    }

    async fn delete_balance_alert(
        &self,
        req: Request<pb::DeleteBalanceAlertRequest>,
    ) -> Result<pb::DeleteBalanceAlertResponse> {
        let caller = caller(&req)?;
        let alert = id("alert_id", &req.get_ref().alert_id)?;
        let deleted = sqlx::query!(
            "UPDATE balance_alerts SET deleted_at = now() WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
            alert,
            caller.user_id
        )
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        if deleted == 0 {
            return Err(status::not_found("balance alert"));
        }
        Ok(Response::new(pb::DeleteBalanceAlertResponse {}))
    }

    async fn create_webhook_endpoint(
        &self,
        req: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<pb::WebhookEndpoint> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        if r.description.chars().count() > 140 || r.description.chars().any(char::is_control) {
            return Err(invalid("description", "must be at most 140 characters without control characters"));
        }
        if r.url.len() > 2048 {
            return Err(invalid("url", "must be at most 2048 characters"));
        }
        // A new endpoint receives every notification from now on: a caller
        // who signs in with a second factor must have given it recently.
        if !caller.stepped_up(Utc::now().timestamp()) {
            return Err(status::with_reason(
                tonic::Code::FailedPrecondition,
                "STEP_UP_REQUIRED",
                format!(
                    "adding a webhook endpoint needs a second factor code given within the last {} minutes: \
                     sign in again with one",
                    bank_platform::auth::STEP_UP_WINDOW_SECS / 60
                ),
            ));
        }
        let url = self.guard.check(&r.url).await.map_err(|why| invalid("url", why))?;
        let count = sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM webhook_endpoints WHERE user_id = $1 AND deleted_at IS NULL"#,
            caller.user_id
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        if count >= MAX_ENDPOINTS {
            return Err(status::with_reason(
                tonic::Code::ResourceExhausted,
                "TOO_MANY_ENDPOINTS",
                format!("at most {MAX_ENDPOINTS} webhook endpoints"),
            ));
        }
        let (id, secret) = (Uuid::now_v7(), new_secret());
        let stored = self.secrets.seal(id, &secret).map_err(|e| status::internal(&e))?;
        let row = sqlx::query_as!(
            EndpointRow,
            "INSERT INTO webhook_endpoints (id, user_id, url, description, secret, created_at)
             VALUES ($1, $2, $3, $4, $5, now()) RETURNING id, url, description, created_at",
            id,
            caller.user_id,
            url.as_str(),
            r.description,
            stored
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(Response::new(endpoint(row, secret)))
    }

    async fn list_webhook_endpoints(
        &self,
        req: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<pb::ListWebhookEndpointsResponse> {
        let caller = caller(&req)?;
        let rows = sqlx::query_as!(
            EndpointRow,
            "SELECT id, url, description, created_at FROM webhook_endpoints
             WHERE user_id = $1 AND deleted_at IS NULL ORDER BY id",
            caller.user_id
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let endpoints = rows.into_iter().map(|e| endpoint(e, String::new())).collect();
        Ok(Response::new(pb::ListWebhookEndpointsResponse { endpoints }))
    }

    async fn delete_webhook_endpoint(
        &self,
        req: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<pb::DeleteWebhookEndpointResponse> {
        let caller = caller(&req)?;
        let endpoint = self.own_endpoint(&caller, id("endpoint_id", &req.get_ref().endpoint_id)?).await?;
        sqlx::query!("UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1", endpoint.id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(&self, req: Request<pb::RotateWebhookSecretRequest>) -> Result<pb::WebhookEndpoint> {
        let caller = caller(&req)?;
        let current = self.own_endpoint(&caller, id("endpoint_id", &req.get_ref().endpoint_id)?).await?;
        let secret = new_secret();
        let stored = self.secrets.seal(current.id, &secret).map_err(|e| status::internal(&e))?;
        let row = sqlx::query_as!(
            EndpointRow,
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $2, secret = $3
             WHERE id = $1 RETURNING id, url, description, created_at",
            current.id,
            Utc::now() + ROTATION_OVERLAP,
            stored
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(Response::new(endpoint(row, secret)))
    }

    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<pb::ListWebhookDeliveriesResponse> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let endpoint = self.own_endpoint(&caller, id("endpoint_id", &r.endpoint_id)?).await?;
        let (size, after) = (page_size(r.page_size)?, page_token(&r.page_token)?);
        // Newest first by notification (time-ordered ids), one row each.
        let rows = sqlx::query_as!(
            DeliveryRow,
            "SELECT id, endpoint_id, notification_id, state, attempts, last_status, last_error, next_attempt_at,
                    created_at, delivered_at
             FROM webhook_deliveries WHERE endpoint_id = $1 AND ($2::uuid IS NULL OR notification_id < $2)
             ORDER BY notification_id DESC LIMIT $3",
            endpoint.id,
            after,
            size + 1
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let more = rows.len() as i64 > size;
        let page: Vec<pb::WebhookDelivery> = rows.into_iter().take(size as usize).map(Into::into).collect();
        let next_page_token =
            if more { page.last().map(|d| d.notification_id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListWebhookDeliveriesResponse { deliveries: page, next_page_token }))
    }

    async fn replay_webhook_delivery(
        &self,
        req: Request<pb::ReplayWebhookDeliveryRequest>,
    ) -> Result<pb::WebhookDelivery> {
        let caller = caller(&req)?;
        let delivery = id("delivery_id", &req.get_ref().delivery_id)?;
        let row = sqlx::query_as!(
            DeliveryRow,
            "UPDATE webhook_deliveries d
             SET state = 'PENDING', attempts = 0, next_attempt_at = now(), leased_until = NULL
             FROM webhook_endpoints e
             WHERE d.id = $1 AND e.id = d.endpoint_id AND e.user_id = $2 AND e.deleted_at IS NULL
               AND d.state <> 'PENDING'
             RETURNING d.id, d.endpoint_id, d.notification_id, d.state, d.attempts, d.last_status, d.last_error,
                       d.next_attempt_at, d.created_at, d.delivered_at",
            delivery,
            caller.user_id
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        match row {
            Some(row) => Ok(Response::new(row.into())),
            None => {
                // Pending already (it is being tried), or not the caller's.
                let pending = sqlx::query_as!(
                    DeliveryRow,
                    "SELECT d.id, d.endpoint_id, d.notification_id, d.state, d.attempts, d.last_status, d.last_error,
                            d.next_attempt_at, d.created_at, d.delivered_at
                     FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
                     WHERE d.id = $1 AND e.user_id = $2 AND e.deleted_at IS NULL",
                    delivery,
                    caller.user_id
                )
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
                pending.map(|d| Response::new(d.into())).ok_or_else(|| status::not_found("webhook delivery"))
            }
        }
    }
}
