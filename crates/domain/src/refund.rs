//! Refunds as pure rules: the refund state machine, release gates, fast refund, timelines and over-refund checks.
//!
//! The refunds service loads rows, calls these functions and writes what they decide; nothing
//! here does I/O. The rules are docs/domain.md "Refunds", "Chargebacks", "Order facts and
//! cancellation" and "Who pays return postage"; every number (timelines, fast-refund limits)
//! is read from the policy.

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::calendar::{BusinessCalendar, BusinessDayRange};
use crate::dispute::{BuyerTier, PaymentMethod};
use crate::error::DomainError;
use crate::macros::code_enum;
use crate::money::{FxTable, Money};
use crate::policy::Policy;
use crate::time::Timestamp;

code_enum! {
    /// Where a refund stands. PENDING means released and waiting for the settlement worker;
    /// SUBMITTED means the worker has taken it to the provider (from then on it can no longer
    /// be cancelled, because the provider may already have paid).
    pub enum RefundStatus as "status" {
        Pending => "PENDING",
        OnHold => "ON_HOLD",
        Submitted => "SUBMITTED",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
}

impl RefundStatus {
    /// Whether the refund counts against the capture: everything except FAILED and
    /// CANCELLED, which will never move money.
    pub fn counts_against_capture(&self) -> bool {
        !matches!(self, Self::Failed | Self::Cancelled)
    }

    /// Whether no further transition can happen.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

code_enum! {
    /// When a refund may be paid.
    pub enum ReleaseCondition as "release" {
        Immediate => "IMMEDIATE",
        OnReturnAcceptedByCarrier => "ON_RETURN_ACCEPTED_BY_CARRIER",
        OnReturnDelivered => "ON_RETURN_DELIVERED",
        OnInspectionPassed => "ON_INSPECTION_PASSED",
    }
}

code_enum! {
    /// Why a refund is made; ORDER_CANCELLED uses the cancellation timeline.
    pub enum RefundReason as "reason" {
        DisputeResolved => "DISPUTE_RESOLVED",
        OrderCancelled => "ORDER_CANCELLED",
        Goodwill => "GOODWILL",
        Other => "OTHER",
    }
}

code_enum! {
    /// Return progress reported by the labels and disputes services. The gate steps come
    /// first, in the order they normally happen; [`ReturnState::from_progress`] sorts on
    /// this order, so new values go after the inspection results.
    pub enum ReturnProgress as "progress" {
        AcceptedByCarrier => "ACCEPTED_BY_CARRIER",
        Delivered => "DELIVERED",
        InspectionPassed => "INSPECTION_PASSED",
        /// Damage in transit or a wrong/empty parcel: refunds still waiting on the return are
        /// cancelled, because the dispute goes back to review and may rule a new refund.
        InspectionFailed => "INSPECTION_FAILED",
        /// A label was created; may carry buyer-paid postage to deduct. Opens no gate.
        LabelCreated => "LABEL_CREATED",
        /// The buyer did not ship the return by its deadline: refunds waiting on it are
        /// cancelled.
        NotShipped => "NOT_SHIPPED",
    }
}

code_enum! {
    /// Why part of a refund is withheld.
    pub enum DeductionKind as "deductions.kind" {
        /// Return postage the buyer pays (changed mind): deducted from the refund.
        ReturnPostage => "RETURN_POSTAGE",
        Other => "OTHER",
    }
}

/// What can happen to a refund; [`transition`] says from which states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundAction {
    /// Its release condition was met (or it was created without one).
    Release,
    /// Kept on hold (e.g. a failed inspection); changes only the reason.
    Hold,
    /// A settlement worker takes it to the provider (also a retry of an earlier attempt).
    Submit,
    /// The provider paid it.
    Succeed,
    /// The provider refused it for good or retries ran out.
    Fail,
    /// Cancelled by a caller or by a chargeback covering it.
    Cancel,
    /// Reduced by a chargeback netting it; only while nothing was sent to the provider.
    Reduce,
    /// Given a deduction (buyer-paid return postage); only while nothing was sent to the
    /// provider, since the provider pays the net amount it was sent.
    Deduct,
}

impl RefundAction {
    fn verb(&self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Hold => "hold",
            Self::Submit => "submit",
            Self::Succeed => "mark succeeded",
            Self::Fail => "mark failed",
            Self::Cancel => "cancel",
            Self::Reduce => "reduce",
            Self::Deduct => "deduct from",
        }
    }

    /// The states the action is allowed in, for the state machine and its error messages.
    pub fn allowed_from(&self) -> &'static [RefundStatus] {
        use RefundStatus::*;
        match self {
            Self::Release | Self::Hold => &[OnHold],
            Self::Submit => &[Pending, Submitted],
            Self::Succeed | Self::Fail => &[Submitted],
            Self::Cancel | Self::Reduce | Self::Deduct => &[Pending, OnHold],
        }
    }
}

/// The refund state machine: the state after `action` in `from`, or `IllegalTransition`
/// naming the current state and the states the action is allowed in.
pub fn transition(from: RefundStatus, action: RefundAction) -> Result<RefundStatus, DomainError> {
    use RefundStatus::*;
    let allowed = action.allowed_from();
    if !allowed.contains(&from) {
        return Err(DomainError::illegal_transition(
            from.code(),
            action.verb(),
            allowed.iter().map(|s| s.code()),
        ));
    }
    Ok(match action {
        RefundAction::Release => Pending,
        RefundAction::Hold => OnHold,
        RefundAction::Submit => Submitted,
        RefundAction::Succeed => Succeeded,
        RefundAction::Fail => Failed,
        RefundAction::Cancel => Cancelled,
        RefundAction::Reduce | RefundAction::Deduct => from,
    })
}

/// Whether a refund of `amount` to a buyer of `tier` qualifies for fast refund (released at
/// the carrier's acceptance scan): Platinum up to USD 25, Diamond up to USD 100 (policy),
/// compared through `fx`. A currency missing from the FX table never qualifies, because the
/// limit cannot be checked.
pub fn fast_refund_eligible(
    policy: &Policy,
    fx: &FxTable,
    tier: BuyerTier,
    amount: &Money,
) -> bool {
    policy
        .is_fast_refund_eligible(tier, amount, fx)
        .unwrap_or(false)
}

/// What the furthest return progress seen so far means for a gated refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    /// Pay it now; `fast` when only the buyer's tier let it out early.
    Release { fast: bool },
    /// Keep waiting; `reason` says for what (shown as the refund's status reason).
    Hold { reason: String },
}

/// How far a return has come, from everything reported for it. Progress can arrive out of
/// order (relays retry), so later steps imply the earlier ones; a failed inspection is kept
/// apart because it blocks release whatever else was seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnState {
    pub accepted: bool,
    pub delivered: bool,
    pub inspection_passed: bool,
    pub inspection_failed: bool,
}

impl ReturnState {
    /// The state after `progress` is reported.
    pub fn with(mut self, progress: ReturnProgress) -> Self {
        match progress {
            ReturnProgress::AcceptedByCarrier => self.accepted = true,
            ReturnProgress::Delivered => {
                self.accepted = true;
                self.delivered = true;
            }
            ReturnProgress::InspectionPassed => {
                self.accepted = true;
                self.delivered = true;
                self.inspection_passed = true;
                self.inspection_failed = false;
            }
            ReturnProgress::InspectionFailed => {
                self.accepted = true;
                self.delivered = true;
                // A pass already recorded stays a pass: the seller cannot take back a refund
                // released on it.
                self.inspection_failed = !self.inspection_passed;
            }
            // Neither says anything about how far the parcel has come.
            ReturnProgress::LabelCreated | ReturnProgress::NotShipped => {}
        }
        self
    }

    /// Folds a list of reports, in any order.
    pub fn from_progress<I: IntoIterator<Item = ReturnProgress>>(reports: I) -> Self {
        // Inspection results are applied last so a late ACCEPTED cannot clear a failure.
        let mut reports: Vec<ReturnProgress> = reports.into_iter().collect();
        reports.sort();
        reports
            .into_iter()
            .fold(ReturnState::default(), ReturnState::with)
    }
}

/// Decides whether a refund gated by `release` is paid given the return's state.
///
/// - IMMEDIATE releases at once;
/// - ON_RETURN_ACCEPTED_BY_CARRIER releases at the acceptance scan (or anything after it);
/// - ON_RETURN_DELIVERED releases on delivery;
/// - ON_INSPECTION_PASSED releases when the inspection passes;
/// - a fast-refund-eligible refund gated on delivery or inspection releases at acceptance;
/// - a failed inspection holds a gated refund requested after it (the service cancels
///   those already waiting when the failure arrives, see [`abandoned_return_cancellation`]);
///   a fast refund the acceptance scan already released is not taken back.
pub fn gate_decision(
    release: ReleaseCondition,
    state: ReturnState,
    fast_eligible: bool,
) -> GateDecision {
    if release == ReleaseCondition::Immediate {
        return GateDecision::Release { fast: false };
    }
    if state.inspection_failed {
        return GateDecision::Hold {
            reason: "return inspection failed: the case goes back to review".to_string(),
        };
    }
    let normally_released = match release {
        ReleaseCondition::Immediate => true,
        ReleaseCondition::OnReturnAcceptedByCarrier => state.accepted,
        ReleaseCondition::OnReturnDelivered => state.delivered,
        ReleaseCondition::OnInspectionPassed => state.inspection_passed,
    };
    if normally_released {
        return GateDecision::Release { fast: false };
    }
    // The tier's promise: paid at the hand-over to the carrier, not on delivery.
    let fast_possible = fast_eligible
        && matches!(
            release,
            ReleaseCondition::OnReturnDelivered | ReleaseCondition::OnInspectionPassed
        );
    if fast_possible && state.accepted {
        return GateDecision::Release { fast: true };
    }
    GateDecision::Hold {
        reason: format!("waiting for {}", waiting_for(release)),
    }
}

fn waiting_for(release: ReleaseCondition) -> &'static str {
    match release {
        ReleaseCondition::Immediate => "nothing",
        ReleaseCondition::OnReturnAcceptedByCarrier => "the carrier's acceptance scan",
        ReleaseCondition::OnReturnDelivered => "delivery of the return to the seller",
        ReleaseCondition::OnInspectionPassed => "the seller's inspection of the return",
    }
}

/// The business-day timeline of a refund: cancellation refunds have their own, otherwise the
/// payment method's (card 5-15, wallet 1-3 in the classic policy).
pub fn timeline(policy: &Policy, reason: RefundReason, method: PaymentMethod) -> BusinessDayRange {
    match reason {
        RefundReason::OrderCancelled => policy.cancellation_refund_timeline(),
        _ => policy.refund_timeline(method),
    }
}

/// When the money is expected at the buyer, for a refund released at `released_at`:
/// `(expected_earliest, expected_latest)`.
pub fn expected_window(
    policy: &Policy,
    calendar: &BusinessCalendar,
    reason: RefundReason,
    method: PaymentMethod,
    released_at: Timestamp,
) -> (Timestamp, Timestamp) {
    calendar.expected_window(released_at, timeline(policy, reason, method))
}

/// The amount paid out after deductions: `amount - sum(deductions)`, never negative.
///
/// Each deduction must be positive and in the refund's currency; deductions larger than the
/// refund leave nothing to pay rather than a negative payout.
pub fn net_amount(amount: Money, deductions: &[Money]) -> Result<Money, DomainError> {
    if !amount.is_positive() {
        return Err(DomainError::validation("amount", "must be positive"));
    }
    let mut net = amount;
    for (index, deduction) in deductions.iter().enumerate() {
        if deduction.currency != amount.currency {
            return Err(DomainError::validation(
                format!("deductions[{index}].amount"),
                format!(
                    "currency {} differs from the refund's {}",
                    deduction.currency, amount.currency
                ),
            ));
        }
        if !deduction.is_positive() {
            return Err(DomainError::validation(
                format!("deductions[{index}].amount"),
                "must be positive",
            ));
        }
        net = net.checked_sub(*deduction)?;
    }
    Ok(Money::new(amount.currency, net.minor_units.max(0)))
}

/// An amount withheld from a refund, as the refund carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deduction {
    pub kind: DeductionKind,
    pub amount: Money,
    pub note: String,
}

/// Whether a return report concerns a refund. A report naming a dispute concerns only that
/// dispute's refunds (an order may have several); otherwise every refund of its order. A
/// refund naming a label only hears reports for that label, or reports naming no label (the
/// disputes service reports without one).
pub fn return_concerns(
    refund_dispute: &str,
    refund_label: &str,
    report_dispute: &str,
    report_label: &str,
) -> bool {
    let dispute_matches = report_dispute.is_empty() || refund_dispute == report_dispute;
    let label_matches =
        refund_label.is_empty() || report_label.is_empty() || refund_label == report_label;
    dispute_matches && label_matches
}

/// The deductions and net amount of a refund after a label's deductions (`added`) reach it,
/// or `None` when it is left as it is: nothing to add, already submitted (the provider pays
/// what it was sent), or already carrying return postage (a second label for the same
/// return, or a redelivered report, must not charge the buyer twice).
///
/// `added` must be in the refund's currency; a mismatch is INVALID_ARGUMENT naming
/// `deductions[i]` of the report.
pub fn add_return_deductions(
    status: RefundStatus,
    amount: Money,
    existing: &[Deduction],
    added: &[Deduction],
) -> Result<Option<(Vec<Deduction>, Money)>, DomainError> {
    if added.is_empty() || transition(status, RefundAction::Deduct).is_err() {
        return Ok(None);
    }
    if existing
        .iter()
        .any(|d| d.kind == DeductionKind::ReturnPostage)
    {
        return Ok(None);
    }
    for (index, deduction) in added.iter().enumerate() {
        if deduction.amount.currency != amount.currency {
            return Err(DomainError::validation(
                format!("deductions[{index}].amount.currency_code"),
                format!(
                    "currency {} differs from the refund's {}",
                    deduction.amount.currency, amount.currency
                ),
            ));
        }
    }
    let mut deductions = existing.to_vec();
    deductions.extend(added.iter().cloned());
    let amounts: Vec<Money> = deductions.iter().map(|d| d.amount).collect();
    let net = net_amount(amount, &amounts)?;
    Ok(Some((deductions, net)))
}

/// Why a refund is cancelled when `progress` says its return will not complete, or `None`
/// when it is left alone. Only refunds still ON_HOLD on a return gate are cancelled: one
/// already released, submitted or paid was decided on earlier evidence. A held refund left
/// behind would keep counting against the capture and block the refund a new ruling grants.
pub fn abandoned_return_cancellation(
    progress: ReturnProgress,
    status: RefundStatus,
    release: ReleaseCondition,
) -> Option<&'static str> {
    let reason = match progress {
        ReturnProgress::InspectionFailed => {
            "return failed inspection; the dispute is back in review"
        }
        ReturnProgress::NotShipped => "return not shipped by its deadline",
        _ => return None,
    };
    let waiting_on_return =
        status == RefundStatus::OnHold && release != ReleaseCondition::Immediate;
    waiting_on_return.then_some(reason)
}

/// What an order's capture has taken so far, for the over-refund rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureBalance {
    /// What was captured: the ceiling.
    pub captured: Money,
    /// Gross amounts of refunds that are neither FAILED nor CANCELLED.
    pub refunded: Money,
    /// Chargebacks recorded on the order.
    pub charged_back: Money,
}

impl CaptureBalance {
    /// What can still be refunded (never negative).
    pub fn refundable(&self) -> Result<Money, DomainError> {
        let used = self.refunded.checked_add(self.charged_back)?;
        let left = self.captured.checked_sub(used)?;
        Ok(Money::new(left.currency, left.minor_units.max(0)))
    }
}

/// The over-refund rule: the sum of non-failed, non-cancelled refunds plus chargebacks never
/// exceeds the capture, in the capture's currency. Gross amounts count (a deduction is money
/// the buyer owes, not money still refundable).
pub fn check_refund_fits(balance: &CaptureBalance, requested: &Money) -> Result<(), DomainError> {
    if requested.currency != balance.captured.currency {
        return Err(DomainError::rule(
            "refund_currency",
            format!(
                "the refund is in {} but the order was captured in {}",
                requested.currency, balance.captured.currency
            ),
        ));
    }
    if !requested.is_positive() {
        return Err(DomainError::validation("amount", "must be positive"));
    }
    let refundable = balance.refundable()?;
    if requested.checked_cmp(&refundable)? == Ordering::Greater {
        let cause = if balance.charged_back.is_positive() {
            format!(
                " (chargebacks of {} were already paid to the buyer by the card network)",
                balance.charged_back
            )
        } else {
            String::new()
        };
        return Err(DomainError::rule(
            "over_refund",
            format!(
                "a refund of {requested} exceeds what is left of the capture: captured {}, \
                 refunded {}, charged back {}, refundable {refundable}{cause}",
                balance.captured, balance.refunded, balance.charged_back
            ),
        ));
    }
    Ok(())
}

/// A refund that a chargeback may net: not yet taken to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NettableRefund<K> {
    pub key: K,
    pub amount: Money,
}

/// What a chargeback does to one pending refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netting<K> {
    /// The chargeback covers it entirely.
    Cancel { key: K },
    /// The chargeback covers part of it; the refund keeps `new_amount`.
    Reduce { key: K, new_amount: Money },
}

/// Nets a chargeback against refunds still pending (PENDING or ON_HOLD), oldest first, so the
/// buyer is paid once: the network already paid `chargeback`, so that much of the pending
/// refunds is cancelled (whole refunds) or reduced (the last one touched).
pub fn net_chargeback<K: Clone>(
    chargeback: Money,
    pending: &[NettableRefund<K>],
) -> Result<Vec<Netting<K>>, DomainError> {
    let mut left = chargeback;
    let mut out = Vec::new();
    for refund in pending {
        if !left.is_positive() {
            break;
        }
        if refund.amount.checked_cmp(&left)? != Ordering::Greater {
            left = left.checked_sub(refund.amount)?;
            out.push(Netting::Cancel {
                key: refund.key.clone(),
            });
        } else {
            out.push(Netting::Reduce {
                key: refund.key.clone(),
                new_amount: refund.amount.checked_sub(left)?,
            });
            left = Money::zero(left.currency);
        }
    }
    Ok(out)
}

/// The pause before retry number `attempt` (1 = the first retry) of a provider submission:
/// `base * 2^(attempt-1)`, capped at `cap`.
pub fn retry_backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    base.checked_mul(1u32 << exponent)
        .map_or(cap, |delay| delay.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::CurrencyCode;
    use chrono::{NaiveDate, TimeZone, Utc};
    use proptest::prelude::*;

    fn usd(minor: i64) -> Money {
        Money::new(CurrencyCode::USD, minor)
    }

    fn eur(minor: i64) -> Money {
        Money::new(CurrencyCode::EUR, minor)
    }

    #[test]
    fn every_state_and_action_pair_follows_the_table() {
        use RefundAction::*;
        use RefundStatus::*;
        let table = [
            (OnHold, Release, Some(Pending)),
            (OnHold, Hold, Some(OnHold)),
            (OnHold, Cancel, Some(Cancelled)),
            (OnHold, Reduce, Some(OnHold)),
            (OnHold, Submit, None),
            (Pending, Submit, Some(Submitted)),
            (Pending, Cancel, Some(Cancelled)),
            (Pending, Reduce, Some(Pending)),
            (Pending, Release, None),
            (Pending, Succeed, None),
            (Submitted, Submit, Some(Submitted)),
            (Submitted, Succeed, Some(Succeeded)),
            (Submitted, Fail, Some(Failed)),
            (Submitted, Cancel, None),
            (Submitted, Reduce, None),
            (Succeeded, Cancel, None),
            (Succeeded, Submit, None),
            (Failed, Submit, None),
            (Cancelled, Release, None),
            (Cancelled, Cancel, None),
            (OnHold, Deduct, Some(OnHold)),
            (Pending, Deduct, Some(Pending)),
            (Submitted, Deduct, None),
            (Succeeded, Deduct, None),
        ];
        for (from, action, expected) in table {
            assert_eq!(transition(from, action).ok(), expected, "{from} {action:?}");
        }
    }

    #[test]
    fn cancelling_a_submitted_refund_names_the_state_and_the_allowed_ones() {
        let error = transition(RefundStatus::Submitted, RefundAction::Cancel)
            .expect_err("submitted refunds cannot be cancelled");
        assert_eq!(
            error,
            DomainError::IllegalTransition {
                from: "SUBMITTED".into(),
                action: "cancel".into(),
                allowed: vec!["PENDING".into(), "ON_HOLD".into()],
            }
        );
    }

    #[test]
    fn only_failed_and_cancelled_refunds_stop_counting_against_the_capture() {
        let counting: Vec<_> = RefundStatus::ALL
            .iter()
            .filter(|s| s.counts_against_capture())
            .map(|s| s.code())
            .collect();
        assert_eq!(counting, ["PENDING", "ON_HOLD", "SUBMITTED", "SUCCEEDED"]);
    }

    fn state(reports: &[ReturnProgress]) -> ReturnState {
        ReturnState::from_progress(reports.iter().copied())
    }

    #[test]
    fn each_gate_opens_on_its_own_return_event_and_not_before() {
        use ReleaseCondition::*;
        use ReturnProgress::*;
        let released = GateDecision::Release { fast: false };
        let cases = [
            (Immediate, vec![], true),
            (OnReturnAcceptedByCarrier, vec![], false),
            (OnReturnAcceptedByCarrier, vec![AcceptedByCarrier], true),
            (OnReturnAcceptedByCarrier, vec![Delivered], true),
            (OnReturnDelivered, vec![AcceptedByCarrier], false),
            (OnReturnDelivered, vec![Delivered], true),
            (
                OnInspectionPassed,
                vec![AcceptedByCarrier, Delivered],
                false,
            ),
            (OnInspectionPassed, vec![InspectionPassed], true),
            (OnInspectionPassed, vec![InspectionFailed], false),
            (OnReturnDelivered, vec![Delivered, InspectionFailed], false),
        ];
        for (gate, reports, opens) in cases {
            let decision = gate_decision(gate, state(&reports), false);
            assert_eq!(decision == released, opens, "{gate} after {reports:?}");
        }
    }

    #[test]
    fn a_failed_inspection_holds_with_a_reason_and_a_late_acceptance_does_not_clear_it() {
        use ReturnProgress::*;
        let decision = gate_decision(
            ReleaseCondition::OnInspectionPassed,
            state(&[InspectionFailed, AcceptedByCarrier]),
            false,
        );
        match decision {
            GateDecision::Hold { reason } => assert!(reason.contains("inspection failed")),
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    #[test]
    fn a_fast_refund_releases_at_the_acceptance_scan_and_others_wait() {
        let accepted = state(&[ReturnProgress::AcceptedByCarrier]);
        assert_eq!(
            gate_decision(ReleaseCondition::OnInspectionPassed, accepted, true),
            GateDecision::Release { fast: true }
        );
        assert_eq!(
            gate_decision(ReleaseCondition::OnReturnDelivered, accepted, true),
            GateDecision::Release { fast: true }
        );
        assert!(matches!(
            gate_decision(ReleaseCondition::OnInspectionPassed, accepted, false),
            GateDecision::Hold { .. }
        ));
        // Nothing scanned yet: even a fast refund waits for the hand-over.
        assert!(matches!(
            gate_decision(
                ReleaseCondition::OnInspectionPassed,
                ReturnState::default(),
                true
            ),
            GateDecision::Hold { .. }
        ));
    }

    #[test]
    fn fast_refund_limits_are_platinum_25_and_diamond_100_usd_through_the_fx_table() {
        let policy = Policy::classic();
        let fx = FxTable::default();
        let cases = [
            (BuyerTier::Platinum, usd(2500), true),
            (BuyerTier::Platinum, usd(2501), false),
            (BuyerTier::Diamond, usd(10_000), true),
            (BuyerTier::Diamond, usd(10_001), false),
            (BuyerTier::Gold, usd(100), false),
            (BuyerTier::Standard, usd(1), false),
            // EUR at 1.08: EUR 23.14 = USD 24.99, EUR 23.15 = USD 25.002.
            (BuyerTier::Platinum, eur(2314), true),
            (BuyerTier::Platinum, eur(2315), false),
            // A currency without a rate cannot be checked against the limit.
            (
                BuyerTier::Diamond,
                Money::new(CurrencyCode::parse("SEK").expect("code"), 100),
                false,
            ),
        ];
        for (tier, amount, eligible) in cases {
            assert_eq!(
                fast_refund_eligible(&policy, &fx, tier, &amount),
                eligible,
                "{tier} {amount}"
            );
        }
    }

    #[test]
    fn timelines_follow_the_method_and_cancellations_have_their_own() {
        let policy = Policy::classic();
        let calendar = BusinessCalendar::weekends_only();
        // Monday 2026-03-02 09:00.
        let released = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("time");
        let at = |d: u32| {
            Utc.with_ymd_and_hms(2026, 3, d, 9, 0, 0)
                .single()
                .expect("time")
        };
        let card = expected_window(
            &policy,
            &calendar,
            RefundReason::DisputeResolved,
            PaymentMethod::Card,
            released,
        );
        // Card: 5 business days = Monday 9th, 15 = Monday 23rd.
        assert_eq!(card, (at(9), at(23)));
        let wallet = expected_window(
            &policy,
            &calendar,
            RefundReason::Goodwill,
            PaymentMethod::Wallet,
            released,
        );
        assert_eq!(wallet, (at(3), at(5)));
        let cancelled = expected_window(
            &policy,
            &calendar,
            RefundReason::OrderCancelled,
            PaymentMethod::Wallet,
            released,
        );
        // Cancellation: 3 = Thursday 5th, 20 = Monday 30th.
        assert_eq!(cancelled, (at(5), at(30)));
    }

    #[test]
    fn timelines_skip_configured_holidays() {
        let policy = Policy::classic();
        let holiday = NaiveDate::from_ymd_opt(2026, 3, 3).expect("date");
        let calendar = BusinessCalendar::new([holiday]);
        let released = Utc
            .with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
            .single()
            .expect("time");
        let (earliest, latest) = expected_window(
            &policy,
            &calendar,
            RefundReason::DisputeResolved,
            PaymentMethod::Wallet,
            released,
        );
        assert_eq!(
            earliest.date_naive(),
            NaiveDate::from_ymd_opt(2026, 3, 4).expect("date")
        );
        assert_eq!(
            latest.date_naive(),
            NaiveDate::from_ymd_opt(2026, 3, 6).expect("date")
        );
    }

    #[test]
    fn net_amount_subtracts_deductions_and_never_goes_negative() {
        assert_eq!(net_amount(usd(5000), &[usd(700)]), Ok(usd(4300)));
        assert_eq!(net_amount(usd(500), &[usd(300), usd(400)]), Ok(usd(0)));
        assert_eq!(net_amount(usd(500), &[]), Ok(usd(500)));
        assert!(matches!(
            net_amount(usd(500), &[eur(10)]),
            Err(DomainError::Validation { field, .. }) if field == "deductions[0].amount"
        ));
        assert!(net_amount(usd(500), &[usd(0)]).is_err());
        assert!(net_amount(usd(0), &[]).is_err());
    }

    fn postage(minor: i64) -> Deduction {
        Deduction {
            kind: DeductionKind::ReturnPostage,
            amount: usd(minor),
            note: "label l-1".into(),
        }
    }

    #[test]
    fn label_postage_is_deducted_from_unsubmitted_refunds_and_recomputes_the_net() {
        let added = [postage(700)];
        for status in [RefundStatus::OnHold, RefundStatus::Pending] {
            assert_eq!(
                add_return_deductions(status, usd(5_000), &[], &added),
                Ok(Some((vec![postage(700)], usd(4_300)))),
                "{status}"
            );
        }
        for status in [
            RefundStatus::Submitted,
            RefundStatus::Succeeded,
            RefundStatus::Failed,
            RefundStatus::Cancelled,
        ] {
            assert_eq!(
                add_return_deductions(status, usd(5_000), &[], &added),
                Ok(None),
                "{status}"
            );
        }
    }

    #[test]
    fn return_postage_is_deducted_once_and_other_deductions_stay() {
        let other = Deduction {
            kind: DeductionKind::Other,
            amount: usd(100),
            note: String::new(),
        };
        assert_eq!(
            add_return_deductions(
                RefundStatus::OnHold,
                usd(5_000),
                std::slice::from_ref(&other),
                &[postage(700)]
            ),
            Ok(Some((vec![other, postage(700)], usd(4_200))))
        );
        assert_eq!(
            add_return_deductions(
                RefundStatus::OnHold,
                usd(4_300),
                &[postage(700)],
                &[postage(700)]
            ),
            Ok(None)
        );
        assert_eq!(
            add_return_deductions(RefundStatus::OnHold, usd(4_300), &[], &[]),
            Ok(None)
        );
    }

    #[test]
    fn postage_above_the_refund_leaves_nothing_to_pay_and_another_currency_is_refused() {
        assert_eq!(
            add_return_deductions(RefundStatus::OnHold, usd(500), &[], &[postage(700)]),
            Ok(Some((vec![postage(700)], usd(0))))
        );
        let in_euros = Deduction {
            amount: eur(700),
            ..postage(0)
        };
        assert!(matches!(
            add_return_deductions(RefundStatus::OnHold, usd(500), &[], &[postage(1), in_euros]),
            Err(DomainError::Validation { field, .. })
                if field == "deductions[1].amount.currency_code"
        ));
    }

    #[test]
    fn a_report_concerns_its_dispute_and_label_or_the_whole_order_when_it_names_neither() {
        // (refund dispute, refund label, report dispute, report label, concerns)
        let cases = [
            ("d-1", "l-1", "d-1", "l-1", true),
            ("d-1", "l-1", "", "l-1", true),
            ("d-1", "l-1", "d-1", "", true),
            ("d-1", "", "d-1", "l-1", true),
            ("", "", "", "", true),
            ("d-2", "l-1", "d-1", "l-1", false),
            ("", "l-1", "d-1", "l-1", false),
            ("d-1", "l-2", "d-1", "l-1", false),
        ];
        for (refund_dispute, refund_label, report_dispute, report_label, concerns) in cases {
            assert_eq!(
                return_concerns(refund_dispute, refund_label, report_dispute, report_label),
                concerns,
                "{refund_dispute}/{refund_label} vs {report_dispute}/{report_label}"
            );
        }
    }

    #[test]
    fn a_failed_or_unshipped_return_cancels_only_refunds_held_on_a_return_gate() {
        use RefundStatus::*;
        use ReleaseCondition::*;
        use ReturnProgress::*;
        assert_eq!(
            abandoned_return_cancellation(InspectionFailed, OnHold, OnInspectionPassed),
            Some("return failed inspection; the dispute is back in review")
        );
        assert_eq!(
            abandoned_return_cancellation(NotShipped, OnHold, OnReturnAcceptedByCarrier),
            Some("return not shipped by its deadline")
        );
        for status in [Pending, Submitted, Succeeded, Failed, Cancelled] {
            assert_eq!(
                abandoned_return_cancellation(InspectionFailed, status, OnInspectionPassed),
                None,
                "{status}"
            );
            assert_eq!(
                abandoned_return_cancellation(NotShipped, status, OnReturnDelivered),
                None,
                "{status}"
            );
        }
        assert_eq!(
            abandoned_return_cancellation(NotShipped, OnHold, Immediate),
            None
        );
        for progress in [AcceptedByCarrier, Delivered, InspectionPassed, LabelCreated] {
            assert_eq!(
                abandoned_return_cancellation(progress, OnHold, OnInspectionPassed),
                None,
                "{progress}"
            );
        }
    }

    #[test]
    fn a_label_or_a_missed_deadline_moves_no_gate() {
        use ReturnProgress::*;
        assert_eq!(state(&[LabelCreated, NotShipped]), ReturnState::default());
        assert_eq!(
            state(&[LabelCreated, AcceptedByCarrier]),
            state(&[AcceptedByCarrier])
        );
    }

    fn balance(captured: i64, refunded: i64, charged_back: i64) -> CaptureBalance {
        CaptureBalance {
            captured: usd(captured),
            refunded: usd(refunded),
            charged_back: usd(charged_back),
        }
    }

    #[test]
    fn a_refund_fits_up_to_the_capture_and_not_a_cent_more() {
        assert_eq!(
            check_refund_fits(&balance(10_000, 4_000, 0), &usd(6_000)),
            Ok(())
        );
        let refused =
            check_refund_fits(&balance(10_000, 4_000, 0), &usd(6_001)).expect_err("one cent over");
        assert!(matches!(
            refused,
            DomainError::RuleViolated {
                rule: "over_refund",
                ..
            }
        ));
        assert!(matches!(
            check_refund_fits(&balance(10_000, 0, 0), &eur(100)),
            Err(DomainError::RuleViolated {
                rule: "refund_currency",
                ..
            })
        ));
    }

    #[test]
    fn a_refund_after_a_chargeback_covering_the_order_is_refused_with_the_chargeback_named() {
        let refused = check_refund_fits(&balance(10_000, 0, 10_000), &usd(1))
            .expect_err("the chargeback took it all");
        let text = refused.to_string();
        assert!(text.contains("over_refund"), "{text}");
        assert!(text.contains("chargebacks of USD 100.00"), "{text}");
    }

    #[test]
    fn a_chargeback_cancels_covered_refunds_and_nets_the_next_one() {
        let pending = [
            NettableRefund {
                key: 1,
                amount: usd(3_000),
            },
            NettableRefund {
                key: 2,
                amount: usd(5_000),
            },
            NettableRefund {
                key: 3,
                amount: usd(1_000),
            },
        ];
        assert_eq!(
            net_chargeback(usd(4_000), &pending),
            Ok(vec![
                Netting::Cancel { key: 1 },
                Netting::Reduce {
                    key: 2,
                    new_amount: usd(4_000)
                },
            ])
        );
        assert_eq!(net_chargeback(usd(0), &pending), Ok(vec![]));
        assert_eq!(
            net_chargeback(usd(9_000), &pending),
            Ok(vec![
                Netting::Cancel { key: 1 },
                Netting::Cancel { key: 2 },
                Netting::Cancel { key: 3 },
            ])
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(10);
        let cap = Duration::from_secs(300);
        let delays: Vec<u64> = (1..=7)
            .map(|n| retry_backoff(n, base, cap).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_backoff(200, base, cap), cap);
    }

    proptest! {
        /// However refund requests arrive, accepting only those the rule lets through never
        /// takes the order past its capture.
        #[test]
        fn no_sequence_of_refund_requests_exceeds_the_capture(
            captured in 1i64..1_000_000,
            requests in proptest::collection::vec((1i64..400_000, any::<bool>()), 0..40),
            chargeback in 0i64..200_000,
        ) {
            let mut refunded = 0i64;
            let charged_back = chargeback.min(captured);
            for (amount, later_cancelled) in requests {
                let state = balance(captured, refunded, charged_back);
                if check_refund_fits(&state, &usd(amount)).is_ok() {
                    refunded += amount;
                    if later_cancelled {
                        // A cancelled refund frees its amount again.
                        refunded -= amount;
                    }
                }
                prop_assert!(refunded + charged_back <= captured);
            }
        }

        /// Netting never leaves more pending than was pending minus the chargeback, and never
        /// touches more than needed.
        #[test]
        fn netting_removes_exactly_the_chargeback_or_everything_pending(
            amounts in proptest::collection::vec(1i64..50_000, 0..10),
            chargeback in 0i64..200_000,
        ) {
            let pending: Vec<_> = amounts
                .iter()
                .enumerate()
                .map(|(key, a)| NettableRefund { key, amount: usd(*a) })
                .collect();
            let nettings = net_chargeback(usd(chargeback), &pending).expect("same currency");
            let mut remaining: Vec<i64> = amounts.clone();
            for netting in nettings {
                match netting {
                    Netting::Cancel { key } => remaining[key] = 0,
                    Netting::Reduce { key, new_amount } => {
                        prop_assert!(new_amount.minor_units > 0);
                        remaining[key] = new_amount.minor_units;
                    }
                }
            }
            let before: i64 = amounts.iter().sum();
            let after: i64 = remaining.iter().sum();
            prop_assert_eq!(before - after, chargeback.min(before));
        }

        /// More return progress never takes a release back: if a gate opens on some reports,
        /// it stays open when further non-failing reports arrive, in any order.
        #[test]
        fn more_return_progress_never_closes_an_open_gate(
            gate in proptest::sample::select(ReleaseCondition::ALL.to_vec()),
            fast in any::<bool>(),
            first in proptest::collection::vec(
                proptest::sample::select(vec![
                    ReturnProgress::AcceptedByCarrier,
                    ReturnProgress::Delivered,
                    ReturnProgress::InspectionPassed,
                ]),
                0..4,
            ),
            more in proptest::collection::vec(
                proptest::sample::select(vec![
                    ReturnProgress::AcceptedByCarrier,
                    ReturnProgress::Delivered,
                    ReturnProgress::InspectionPassed,
                ]),
                0..4,
            ),
        ) {
            let before = gate_decision(gate, ReturnState::from_progress(first.clone()), fast);
            let mut all = more;
            all.extend(first);
            let after = gate_decision(gate, ReturnState::from_progress(all), fast);
            let opened = matches!(before, GateDecision::Release { .. });
            let still_open = matches!(after, GateDecision::Release { .. });
            prop_assert!(!opened || still_open, "{:?} then {:?}", before, after);
        }

        #[test]
        fn the_net_amount_is_never_negative_nor_above_the_gross(
            amount in 1i64..1_000_000,
            deductions in proptest::collection::vec(1i64..1_000_000, 0..5),
        ) {
            let deductions: Vec<Money> = deductions.into_iter().map(usd).collect();
            let net = net_amount(usd(amount), &deductions).expect("valid");
            prop_assert!(net.minor_units >= 0 && net.minor_units <= amount);
        }
    }
}
