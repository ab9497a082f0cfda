//! What happens to a refund row when a rule of `returns_domain::refund` moves it: released
//! onto its payment method's timeline, held at a return gate, given a label's deductions or
//! cancelled with an abandoned return. Shared by refund creation, return progress and
//! RecordCapture; each returns whether the row changed, for the caller to save.

use returns_domain::refund::{
    self as rules, Deduction, GateDecision, RefundAction, RefundStatus, ReturnProgress, ReturnState,
};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::ApiError;

use super::RefundGrpc;
use crate::store::{CaptureRow, RefundRow};

/// Releases `refund` (ON_HOLD or new) at `now`: timeline window, due for the worker.
fn release(
    service: &RefundGrpc,
    refund: &mut RefundRow,
    fast: bool,
    now: Timestamp,
) -> Result<(), ApiError> {
    refund.status = rules::transition(refund.status, RefundAction::Release)?;
    let (earliest, latest) = rules::expected_window(
        &service.context.policy,
        &service.calendar,
        refund.reason,
        refund.method,
        now,
    );
    let now_us = to_unix_micros(now);
    refund.released_at = Some(now_us);
    refund.expected_earliest = Some(to_unix_micros(earliest));
    refund.expected_latest = Some(to_unix_micros(latest));
    refund.next_attempt_at = Some(now_us);
    refund.fast_refund = fast;
    refund.status_reason.clear();
    refund.updated_at = now_us;
    Ok(())
}

/// Adds a label's deductions to a refund not yet submitted (see
/// [`rules::add_return_deductions`]).
pub fn apply_label_deductions(
    refund: &mut RefundRow,
    deductions: &[Deduction],
    now: Timestamp,
) -> Result<bool, ApiError> {
    let Some((deductions, net)) =
        rules::add_return_deductions(refund.status, refund.amount, &refund.deductions, deductions)?
    else {
        return Ok(false);
    };
    refund.status = rules::transition(refund.status, RefundAction::Deduct)?;
    refund.deductions = deductions;
    refund.net = net;
    refund.updated_at = to_unix_micros(now);
    Ok(true)
}

/// Cancels a refund held on a return that will not complete (failed inspection, not
/// shipped).
pub fn cancel_for_abandoned_return(
    refund: &mut RefundRow,
    progress: ReturnProgress,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let Some(reason) =
        rules::abandoned_return_cancellation(progress, refund.status, refund.release)
    else {
        return Ok(false);
    };
    refund.status = rules::transition(refund.status, RefundAction::Cancel)?;
    refund.status_reason = reason.to_string();
    refund.next_attempt_at = None;
    refund.updated_at = to_unix_micros(now);
    Ok(true)
}

/// Releases or holds an ON_HOLD refund by its gate and how far its return has come
/// (`state`, read by the caller with the rest of what it needs).
pub fn apply_gate_in(
    service: &RefundGrpc,
    capture: &CaptureRow,
    refund: &mut RefundRow,
    state: ReturnState,
    now: Timestamp,
) -> Result<bool, ApiError> {
    if refund.status != RefundStatus::OnHold {
        return Ok(false);
    }
    let fast = rules::fast_refund_eligible(
        &service.context.policy,
        &service.fx,
        capture.tier,
        &refund.amount,
    );
    match rules::gate_decision(refund.release, state, fast) {
        GateDecision::Release { fast } => {
            release(service, refund, fast, now)?;
            Ok(true)
        }
        GateDecision::Hold { reason } => {
            if refund.status_reason == reason {
                return Ok(false);
            }
            refund.status = rules::transition(refund.status, RefundAction::Hold)?;
            refund.status_reason = reason;
            refund.updated_at = to_unix_micros(now);
            Ok(true)
        }
    }
}
