//! Returns: RecordReturnProgress, the labels and disputes services telling refunds how a
//! return is going (deductions at label creation, gates opening, abandoned returns).

use returns_domain::ids::OrderId;
use returns_domain::refund::{self as rules, RefundStatus, ReturnProgress};
use returns_domain::time::to_unix_micros;
use returns_platform::{ApiError, Caller, RequestKey, mutate, outbox};
use returns_proto::convert;
use returns_proto::refunds::v1 as pb;

use super::{MAX_TEXT, RELAY_SOURCE, RefundGrpc, gates, wire};
use crate::store::{self, ReturnEvent, ReturnReports};

pub(super) async fn record_return_progress(
    service: &RefundGrpc,
    caller: &Caller,
    req: pb::RecordReturnProgressRequest,
) -> Result<pb::RecordReturnProgressResponse, ApiError> {
    let request_id = convert::request_id(&req.request_id)?;
    let message_id = &convert::optional_external_id("message_id", &req.message_id)?;
    let order_id: &OrderId = &convert::id("order_id", &req.order_id)?;
    tracing::Span::current().record("order_id", order_id.as_str());
    let label_id = &convert::optional_external_id("return_label_id", &req.return_label_id)?;
    let dispute_id = &convert::optional_external_id("dispute_id", &req.dispute_id)?;
    let progress: ReturnProgress = convert::enum_value("progress", req.progress)?;
    let notes = &convert::text("notes", &req.notes, MAX_TEXT)?;
    let deductions = &wire::parse_deductions(&req.deductions)?;
    if !deductions.is_empty() && progress != ReturnProgress::LabelCreated {
        return Err(ApiError::invalid(
            "deductions",
            format!("only RETURN_PROGRESS_LABEL_CREATED carries deductions, not {progress}"),
        ));
    }
    let now = service.now();
    let occurred_at =
        convert::optional_timestamp("occurred_at", req.occurred_at.as_ref())?.unwrap_or(now);
    let key = RequestKey::new("RecordReturnProgress", caller, request_id.as_str(), &req);
    mutate(&service.db, &service.context, &key, |mut tx| async move {
        let fresh = message_id.is_empty()
            || outbox::accept_once(&mut tx, message_id, RELAY_SOURCE, now).await?;
        let capture = store::lock_capture(&service.db, &mut tx, order_id).await?;
        if let Some(capture) = &capture {
            // Checked against the capture, not only the refunds present now: the event is
            // kept for refunds requested later, which are in its currency.
            for (index, deduction) in deductions.iter().enumerate() {
                if deduction.amount.currency != capture.amount.currency {
                    return Err(ApiError::invalid(
                        format!("deductions[{index}].amount.currency_code"),
                        format!(
                            "currency {} differs from the order's capture in {}",
                            deduction.amount.currency, capture.amount.currency
                        ),
                    ));
                }
            }
        }
        let mut refunds =
            store::lock_gated_refunds(&service.db, &mut tx, order_id, label_id).await?;
        refunds.retain(|refund| {
            rules::return_concerns(
                &refund.dispute_id,
                &refund.return_label_id,
                dispute_id,
                label_id,
            )
        });
        if fresh {
            let event = ReturnEvent {
                order_id: order_id.clone(),
                return_label_id: label_id.clone(),
                dispute_id: dispute_id.clone(),
                progress,
                occurred_at: to_unix_micros(occurred_at),
                received_at: to_unix_micros(now),
                notes: notes.clone(),
                deductions: deductions.clone(),
            };
            store::record_return_event(tx.writes(), &event)?;
            if let Some(capture) = &capture {
                // The order's reports, read once for every refund waiting at a gate, with the
                // one being recorded (its write is deferred).
                let gate_opening = matches!(
                    progress,
                    ReturnProgress::AcceptedByCarrier
                        | ReturnProgress::Delivered
                        | ReturnProgress::InspectionPassed
                );
                let reports =
                    if gate_opening && refunds.iter().any(|r| r.status == RefundStatus::OnHold) {
                        let mut reports = store::return_reports(&mut tx, order_id).await?;
                        reports.add(label_id, progress);
                        reports
                    } else {
                        ReturnReports::default()
                    };
                for refund in &mut refunds {
                    let before = (refund.status, refund.net);
                    let changed = match progress {
                        ReturnProgress::LabelCreated => {
                            gates::apply_label_deductions(refund, deductions, now)?
                        }
                        ReturnProgress::InspectionFailed | ReturnProgress::NotShipped => {
                            gates::cancel_for_abandoned_return(refund, progress, now)?
                        }
                        ReturnProgress::AcceptedByCarrier
                        | ReturnProgress::Delivered
                        | ReturnProgress::InspectionPassed => {
                            let state = reports.state(&refund.return_label_id);
                            gates::apply_gate_in(service, capture, refund, state, now)?
                        }
                    };
                    if changed {
                        store::save_refund(tx.writes(), refund)?;
                        store::append_ledger(tx.writes(), Some(before), refund, now);
                    }
                }
            }
        }
        let response = pb::RecordReturnProgressResponse {
            refunds: wire::refunds(&refunds),
        };
        Ok((tx, response))
    })
    .await
}
