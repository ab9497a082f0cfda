//! The dispute state machine's entry point: every command that can happen to a dispute, the
//! states each is allowed in, and `apply`, which refuses a command in any other state and
//! hands the rest to the function of its group (offers, conversation, review, deadlines,
//! return progress).

use super::conversation::{add_evidence, send_message};
use super::deadlines::{return_ship_by_expired, seller_response_expired};
use super::events::{DisputeEvent, ReturnUpdate};
use super::evidence::NewEvidence;
use super::offers::{accept_offer, make_offer, reject_offer};
use super::parties::Actor;
use super::record::Dispute;
use super::return_progress::record_return_progress;
use super::review::{escalate, rule, withdraw};
use super::vocabulary::DisputeState;
use crate::dispute::{PostagePayer, ResolutionType, RulingOutcome};
use crate::error::DomainError;
use crate::ids::{EvidenceId, OfferId};
use crate::money::Money;
use crate::policy::Policy;
use crate::time::Timestamp;

/// An arbiter's ruling, as validated by `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    pub outcome: RulingOutcome,
    pub amount: Option<Money>,
    pub return_required: bool,
    pub rationale: String,
    pub postage_payer: Option<PostagePayer>,
}

/// Everything that can happen to an open dispute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    MakeOffer {
        by: Actor,
        offer_id: OfferId,
        kind: ResolutionType,
        amount: Option<Money>,
        note: String,
    },
    AcceptOffer {
        by: Actor,
        offer_id: OfferId,
    },
    RejectOffer {
        by: Actor,
        offer_id: OfferId,
        reason: String,
    },
    SendMessage {
        by: Actor,
        body: String,
        evidence_ids: Vec<EvidenceId>,
    },
    AddEvidence {
        by: Actor,
        evidence_id: EvidenceId,
        evidence: NewEvidence,
    },
    Escalate {
        by: Actor,
        reason: String,
    },
    Rule {
        by: Actor,
        ruling: Ruling,
    },
    Cancel {
        by: Actor,
        reason: String,
    },
    /// The seller-response deadline fell due.
    SellerResponseExpired,
    /// The return ship-by deadline fell due.
    ReturnShipByExpired,
    /// Relayed from the labels service.
    ReturnEvent {
        update: ReturnUpdate,
    },
}

impl Command {
    /// The action's name in error messages.
    pub fn action(&self) -> &'static str {
        match self {
            Command::MakeOffer { .. } => "make an offer",
            Command::AcceptOffer { .. } => "accept an offer",
            Command::RejectOffer { .. } => "reject an offer",
            Command::SendMessage { .. } => "send a message",
            Command::AddEvidence { .. } => "add evidence",
            Command::Escalate { .. } => "escalate",
            Command::Rule { .. } => "rule",
            Command::Cancel { .. } => "withdraw the dispute",
            Command::SellerResponseExpired => "expire the seller response window",
            Command::ReturnShipByExpired => "expire the return ship-by deadline",
            Command::ReturnEvent { .. } => "record return progress",
        }
    }

    /// The states in which the command is allowed.
    pub fn allowed_states(&self) -> &'static [DisputeState] {
        use DisputeState::*;
        match self {
            Command::MakeOffer { .. }
            | Command::AcceptOffer { .. }
            | Command::RejectOffer { .. }
            | Command::SellerResponseExpired => &[Open, Negotiating],
            Command::SendMessage { .. } | Command::AddEvidence { .. } => {
                &[Open, Negotiating, Escalated, AwaitingReturn]
            }
            Command::Escalate { .. } => &[Negotiating],
            Command::Rule { .. } => &[Escalated],
            Command::Cancel { .. } => &[Open, Negotiating, Escalated],
            Command::ReturnShipByExpired => &[AwaitingReturn],
            Command::ReturnEvent { .. } => &[
                Open,
                Negotiating,
                Escalated,
                AwaitingReturn,
                Resolved,
                Cancelled,
            ],
        }
    }
}

fn illegal(dispute: &Dispute, command: &Command) -> DomainError {
    DomainError::illegal_transition(
        dispute.state.code(),
        command.action(),
        command.allowed_states().iter().map(|s| s.code()),
    )
}

/// Applies `command` to `dispute` at `now`: the next dispute (version + 1) and the history
/// entries to append, or why the command is refused.
pub fn apply(
    dispute: &Dispute,
    command: Command,
    now: Timestamp,
    policy: &Policy,
) -> Result<(Dispute, Vec<DisputeEvent>), DomainError> {
    if !command.allowed_states().contains(&dispute.state) {
        return Err(illegal(dispute, &command));
    }
    match command {
        Command::MakeOffer {
            by,
            offer_id,
            kind,
            amount,
            note,
        } => make_offer(dispute, by, offer_id, kind, amount, note, now, policy),
        Command::AcceptOffer { by, offer_id } => accept_offer(dispute, by, offer_id, now, policy),
        Command::RejectOffer {
            by,
            offer_id,
            reason,
        } => reject_offer(dispute, by, offer_id, reason, now),
        Command::SendMessage {
            by,
            body,
            evidence_ids,
        } => send_message(dispute, by, body, evidence_ids, now),
        Command::AddEvidence {
            by,
            evidence_id,
            evidence,
        } => add_evidence(dispute, by, evidence_id, evidence, now),
        Command::Escalate { by, reason } => escalate(dispute, by, reason, now, policy),
        Command::Rule { by, ruling } => rule(dispute, by, ruling, now, policy),
        Command::Cancel { by, reason } => withdraw(dispute, by, reason, now),
        Command::SellerResponseExpired => seller_response_expired(dispute, now, policy),
        Command::ReturnShipByExpired => return_ship_by_expired(dispute, now, policy),
        Command::ReturnEvent { update } => record_return_progress(dispute, update, now, policy),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::dispute::{ResolutionType, Role, RulingOutcome};
    use crate::negotiation::fixtures::*;
    use crate::negotiation::*;
    use crate::policy::Policy;
    use crate::time::Timestamp;

    #[test]
    fn terminal_states_refuse_every_action_naming_the_state() {
        let policy = Policy::classic();
        let (d, _) = apply(
            &damaged(),
            Command::Cancel {
                by: buyer(),
                reason: String::new(),
            },
            at(11),
            &policy,
        )
        .expect("cancel");
        let err = apply(
            &d,
            offer(seller(), ResolutionType::FullRefund, None),
            at(12),
            &policy,
        )
        .expect_err("terminal");
        assert_eq!(
            err.to_string(),
            "cannot make an offer in state CANCELLED; allowed: OPEN, NEGOTIATING"
        );
    }

    #[test]
    fn every_transition_lands_in_the_state_the_table_gives() {
        use DisputeState::*;
        let policy = Policy::classic();
        let open = damaged();
        let first = open.offers[0].id;
        let reject = |by: Actor, offer_id| Command::RejectOffer {
            by,
            offer_id,
            reason: "no".into(),
        };
        let (negotiating, _) =
            apply(&open, reject(seller(), first), at(11), &policy).expect("reject");
        let (escalated, _) = apply(
            &negotiating,
            Command::Escalate {
                by: buyer(),
                reason: String::new(),
            },
            at(12),
            &policy,
        )
        .expect("escalate");
        let rule = |return_required| Command::Rule {
            by: arbiter(),
            ruling: Ruling {
                outcome: RulingOutcome::RefundFull,
                amount: None,
                return_required,
                rationale: "r".into(),
                postage_payer: None,
            },
        };
        let (awaiting, _) = apply(&escalated, rule(true), at(13), &policy).expect("rule");
        let withdraw = || Command::Cancel {
            by: buyer(),
            reason: String::new(),
        };
        let inspected = |kind| Command::ReturnEvent {
            update: ReturnUpdate {
                label_id: "l".into(),
                kind,
                tracking_number: String::new(),
                notes: String::new(),
                postage: None,
            },
        };
        let table: Vec<(&str, &Dispute, Command, Timestamp, DisputeState)> = vec![
            (
                "seller counters",
                &open,
                offer(seller(), ResolutionType::PartialRefund, Some(usd(100))),
                at(11),
                Negotiating,
            ),
            (
                "buyer revises the request",
                &open,
                offer(buyer(), ResolutionType::PartialRefund, Some(usd(100))),
                at(11),
                Open,
            ),
            (
                "seller accepts the request",
                &open,
                Command::AcceptOffer {
                    by: seller(),
                    offer_id: first,
                },
                at(11),
                Resolved,
            ),
            (
                "seller rejects",
                &open,
                reject(seller(), first),
                at(11),
                Negotiating,
            ),
            (
                "seller silent",
                &open,
                Command::SellerResponseExpired,
                at(25),
                Resolved,
            ),
            ("withdrawn while open", &open, withdraw(), at(11), Cancelled),
            (
                "buyer escalates",
                &negotiating,
                Command::Escalate {
                    by: buyer(),
                    reason: String::new(),
                },
                at(12),
                Escalated,
            ),
            (
                "buyer counters",
                &negotiating,
                offer(buyer(), ResolutionType::ReturnAndRefund, None),
                at(12),
                Negotiating,
            ),
            (
                "withdrawn while negotiating",
                &negotiating,
                withdraw(),
                at(12),
                Cancelled,
            ),
            (
                "ruling without return",
                &escalated,
                rule(false),
                at(13),
                Resolved,
            ),
            (
                "ruling with return",
                &escalated,
                rule(true),
                at(13),
                AwaitingReturn,
            ),
            (
                "withdrawn in review",
                &escalated,
                withdraw(),
                at(13),
                Cancelled,
            ),
            (
                "return not shipped in time",
                &awaiting,
                Command::ReturnShipByExpired,
                at(20),
                Resolved,
            ),
            (
                "inspection passed",
                &awaiting,
                inspected(ReturnEventType::InspectionDamagedAsClaimed),
                at(18),
                Resolved,
            ),
            (
                "inspection failed",
                &awaiting,
                inspected(ReturnEventType::InspectionDamagedInTransit),
                at(18),
                Escalated,
            ),
        ];
        for (name, from, command, now, expected) in table {
            let (next, events) =
                apply(from, command, now, &policy).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(next.state, expected, "{name}");
            assert!(
                events
                    .iter()
                    .all(|e| e.from == Some(from.state) && e.to == expected),
                "{name}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One abstract move; turned into a command that fits the current dispute.
        fn command_for(d: &Dispute, step: u8, amount: i64) -> Command {
            let pending = d.pending_offer().map(|o| (o.id, o.made_by.role));
            let answerer = |role| {
                if role == Role::Buyer {
                    seller()
                } else {
                    buyer()
                }
            };
            match step % 12 {
                0 => offer(seller(), ResolutionType::PartialRefund, Some(usd(amount))),
                1 => offer(buyer(), ResolutionType::ReturnAndRefund, None),
                2 => match pending {
                    Some((id, role)) => Command::AcceptOffer {
                        by: answerer(role),
                        offer_id: id,
                    },
                    None => Command::SellerResponseExpired,
                },
                3 => match pending {
                    Some((id, role)) => Command::RejectOffer {
                        by: answerer(role),
                        offer_id: id,
                        reason: "no".into(),
                    },
                    None => Command::ReturnShipByExpired,
                },
                4 => Command::Escalate {
                    by: buyer(),
                    reason: String::new(),
                },
                5 => Command::Rule {
                    by: arbiter(),
                    ruling: Ruling {
                        outcome: RulingOutcome::RefundPartial,
                        amount: Some(usd(amount)),
                        return_required: amount % 2 == 0,
                        rationale: "r".into(),
                        postage_payer: None,
                    },
                },
                6 => Command::Cancel {
                    by: buyer(),
                    reason: String::new(),
                },
                7 => Command::SellerResponseExpired,
                8 => Command::ReturnShipByExpired,
                9 => Command::SendMessage {
                    by: seller(),
                    body: "hi".into(),
                    evidence_ids: vec![],
                },
                10 => Command::ReturnEvent {
                    update: ReturnUpdate {
                        label_id: "l".into(),
                        kind: ReturnEventType::ALL[(amount as usize) % ReturnEventType::ALL.len()],
                        tracking_number: String::new(),
                        notes: String::new(),
                        postage: None,
                    },
                },
                _ => offer(seller(), ResolutionType::FullRefund, None),
            }
        }

        fn check_invariants(d: &Dispute) {
            let pending = d
                .offers
                .iter()
                .filter(|o| o.status == OfferStatus::Pending)
                .count();
            assert!(pending <= 1, "at most one pending offer");
            for (i, o) in d.offers.iter().enumerate() {
                assert_eq!(o.number as usize, i + 1, "offers are numbered from one");
            }
            assert!(
                d.refund_requested.minor_units <= d.order_total.minor_units,
                "never more than paid"
            );
            match d.state {
                DisputeState::Resolved => {
                    assert!(d.outcome.is_some());
                    assert!(d.closed_at.is_some());
                }
                DisputeState::Cancelled => assert!(d.closed_at.is_some()),
                DisputeState::AwaitingReturn => {
                    assert!(d.outcome.as_ref().is_some_and(|o| o.return_required));
                }
                DisputeState::Escalated => assert!(d.escalated_at.is_some()),
                _ => assert!(d.closed_at.is_none()),
            }
            if d.state.is_terminal() {
                assert_eq!(d.awaiting, Awaiting::Nobody);
                assert_eq!(d.respond_by, None);
                assert_eq!(pending, 0);
                assert_eq!(d.deadline(), None);
            }
            if d.state == DisputeState::Escalated {
                assert_eq!(pending, 0, "escalation closes pending offers");
            }
        }

        proptest! {
            #[test]
            fn every_sequence_of_commands_keeps_the_invariants(
                steps in proptest::collection::vec((0u8..12, 1i64..=8000, 0i64..40), 0..30)
            ) {
                let policy = Policy::classic();
                let mut d = damaged();
                let mut now = at(10);
                for (step, amount, hours) in steps {
                    now += Duration::hours(hours * 12);
                    let command = command_for(&d, step, amount);
                    let before = d.clone();
                    match apply(&d, command, now, &policy) {
                        Ok((next, events)) => {
                            prop_assert_eq!(next.version, before.version + 1);
                            prop_assert!(!events.is_empty(), "every transition writes history");
                            prop_assert!(events.iter().all(|e| e.to == next.state && e.from == Some(before.state)));
                            if before.state.is_terminal() {
                                prop_assert_eq!(&next.state, &before.state, "terminal states stay");
                            }
                            d = next;
                        }
                        Err(_) => prop_assert_eq!(&d, &before),
                    }
                    check_invariants(&d);
                }
            }
        }
    }
}
