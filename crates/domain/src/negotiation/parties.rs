//! Who acts on a dispute: the actor of each command, and which side of the dispute (buyer or
//! seller) a caller is on, which decides what they may do.

use serde::{Deserialize, Serialize};

use super::record::Dispute;
use crate::dispute::Role;
use crate::error::DomainError;

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    pub role: Role,
}

impl Actor {
    pub fn new(id: impl Into<String>, role: Role) -> Self {
        Actor {
            id: id.into(),
            role,
        }
    }

    /// The suite itself, for deadlines and relay deliveries.
    pub fn system() -> Self {
        Actor::new("system", Role::Platform)
    }
}

/// Which side of the dispute an actor is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Party {
    Buyer,
    Seller,
}

impl Party {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Party::Buyer => "buyer",
            Party::Seller => "seller",
        }
    }
}

/// Refuses unless `by` is the dispute's buyer (`what` says what only the buyer may do).
pub(super) fn require_buyer(dispute: &Dispute, by: &Actor, what: &str) -> Result<(), DomainError> {
    if party_of(dispute, by)? != Party::Buyer {
        return Err(DomainError::rule("buyer_only", what));
    }
    Ok(())
}

/// The side `actor` is on, or `not_a_party` when they are neither this buyer nor this seller.
pub(super) fn party_of(dispute: &Dispute, actor: &Actor) -> Result<Party, DomainError> {
    match actor.role {
        Role::Buyer if actor.id == dispute.buyer_id.as_str() => Ok(Party::Buyer),
        Role::Seller if actor.id == dispute.seller_id.as_str() => Ok(Party::Seller),
        _ => Err(DomainError::rule(
            "not_a_party",
            format!(
                "{} {} is not a party to dispute {}",
                actor.role, actor.id, dispute.id
            ),
        )),
    }
}
