//! Who is acting, and what they may see: the token's roles narrowed by the
//! holder's newest standing.

use uuid::Uuid;

use crate::{Account, DomainError, Forbidden};

/// What a verified token says of its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub id: Uuid,
    /// KYC-active when the token was issued.
    pub active: bool,
    /// Teller or admin.
    pub teller: bool,
    pub admin: bool,
    pub service: bool,
    /// The standing the token was issued under.
    pub standing_version: i64,
}

/// The holder's newest standing as auth-service signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandingClaims {
    pub seq: i64,
    pub active: bool,
    /// Teller or admin.
    pub teller: bool,
    pub admin: bool,
}

/// Who is acting, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: Uuid,
    /// KYC-active.
    pub active: bool,
    /// Teller, or admin acting as one: staff who move money across the boundary.
    pub teller: bool,
    pub admin: bool,
    /// An internal service with credentials of its own, not a customer.
    pub service: bool,
}

impl Actor {
    /// The actor a token makes, narrowed by the holder's newest standing where
    /// that is newer than the token: a suspension or a revoked role counts at
    /// once; an approval or a grant waits for a new token (a standing only
    /// ever takes away what the token gives).
    pub fn narrowed(token: &TokenClaims, standing: Option<&StandingClaims>) -> Self {
        let (active, teller, admin) = match standing {
            // One the token already reflects (or an older one still in
            // flight) says nothing new.
            Some(s) if s.seq > token.standing_version => (s.active, s.teller, s.admin),
            _ => (true, true, true),
        };
        Actor {
            id: token.id,
            active: token.active && active,
            teller: token.teller && teller,
            admin: token.admin && admin,
            service: token.service,
        }
    }

    /// Staff in good standing and services see every account in an answer;
    /// everyone else only their own (a sender learns nothing of the payee).
    pub fn sees_every_account(&self) -> bool {
        (self.teller && self.active) || self.service
    }

    pub fn may_see(&self, account: &Account) -> bool {
        self.sees_every_account() || account.owner_id == self.id
    }

    /// Staff or a service, and in good standing: a suspended or unapproved
    /// teller moves no money. `rule` is the refusal for anyone else.
    pub(super) fn ensure_may_cross_boundary(&self, rule: Forbidden) -> Result<(), DomainError> {
        if !(self.teller || self.service) {
            return Err(DomainError::NotPermitted(rule));
        }
        if !self.active {
            return Err(DomainError::NotPermitted(Forbidden::Suspended));
        }
        Ok(())
    }

    /// Staff only (not services), in good standing.
    pub(super) fn ensure_staff(&self, rule: Forbidden) -> Result<(), DomainError> {
        if !self.teller {
            return Err(DomainError::NotPermitted(rule));
        }
        self.ensure_may_cross_boundary(rule)
    }

    /// A customer in good standing (KYC-active, not suspended), not a service.
    pub fn ensure_customer(&self) -> Result<(), DomainError> {
        if self.service {
            return Err(DomainError::NotPermitted(Forbidden::ServiceNotCustomer));
        }
        if self.active { Ok(()) } else { Err(DomainError::CustomerNotActive) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(teller: bool, version: i64) -> TokenClaims {
        TokenClaims {
            id: Uuid::now_v7(),
            active: true,
            teller,
            admin: false,
            service: false,
            standing_version: version,
        }
    }

    fn standing(seq: i64, active: bool, teller: bool) -> StandingClaims {
        StandingClaims { seq, active, teller, admin: false }
    }

    #[test]
    fn a_newer_standing_takes_away_what_the_token_gives() {
        let t = token(true, 3);
        let revoked = Actor::narrowed(&t, Some(&standing(4, true, false)));
        assert!(!revoked.teller && !revoked.sees_every_account());
        let suspended = Actor::narrowed(&t, Some(&standing(4, false, true)));
        assert!(!suspended.active && !suspended.sees_every_account());
    }

    #[test]
    fn an_older_standing_says_nothing_and_a_standing_never_grants() {
        let t = token(true, 3);
        assert_eq!(Actor::narrowed(&t, Some(&standing(3, false, false))), Actor::narrowed(&t, None));
        let customer = token(false, 3);
        assert!(!Actor::narrowed(&customer, Some(&standing(9, true, true))).teller);
    }

    #[test]
    fn only_staff_in_good_standing_and_services_see_other_peoples_accounts() {
        let mut a = Actor::narrowed(&token(true, 0), None);
        let other = crate::Account {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            kind: crate::AccountKind::Checking,
            currency: crate::Currency::from_code("USD").unwrap(),
            balance: Default::default(),
            status: crate::AccountStatus::Active,
            version: 1,
            held: Default::default(),
            limits: Default::default(),
            debited_last_day: Default::default(),
        };
        assert!(a.may_see(&other));
        a.active = false;
        assert!(!a.may_see(&other));
        a.service = true;
        assert!(a.may_see(&other));
        let mine = crate::Account { owner_id: a.id, ..other };
        assert!(Actor { service: false, teller: false, ..a }.may_see(&mine));
    }
}
