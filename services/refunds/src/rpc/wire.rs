//! Message builders (stored rows -> protobuf) and the one request part this service parses
//! beyond the toolkit's primitives (a list of deductions).

use returns_domain::refund::{CaptureBalance, Deduction};
use returns_platform::ApiError;
use returns_proto::convert::{self, FieldError, WireEnum};
use returns_proto::refunds::v1 as pb;

use super::MAX_TEXT;
use crate::store::{CaptureRow, ChargebackRow, RefundRow};

/// The `deductions` of a request: each with a kind, a positive amount and a bounded note.
pub fn parse_deductions(deductions: &[pb::Deduction]) -> Result<Vec<Deduction>, FieldError> {
    deductions
        .iter()
        .enumerate()
        .map(|(index, deduction)| {
            let field = format!("deductions[{index}]");
            Ok(Deduction {
                kind: convert::enum_value(&format!("{field}.kind"), deduction.kind)?,
                amount: convert::positive_money(
                    &format!("{field}.amount"),
                    deduction.amount.as_ref(),
                )?,
                note: convert::text(&format!("{field}.note"), &deduction.note, MAX_TEXT)?,
            })
        })
        .collect()
}

pub fn refund(row: &RefundRow) -> pb::Refund {
    pb::Refund {
        refund_id: row.refund_id.to_string(),
        order_id: row.order_id.to_string(),
        dispute_id: row.dispute_id.clone(),
        buyer_id: row.buyer_id.to_string(),
        amount: Some(row.amount.into()),
        net_amount: Some(row.net.into()),
        deductions: row
            .deductions
            .iter()
            .map(|deduction| pb::Deduction {
                kind: deduction.kind.to_wire(),
                amount: Some(deduction.amount.into()),
                note: deduction.note.clone(),
            })
            .collect(),
        reason: row.reason.to_wire(),
        release: row.release.to_wire(),
        return_label_id: row.return_label_id.clone(),
        status: row.status.to_wire(),
        payment_method: row.method.to_wire(),
        expected_earliest: row.expected_earliest.and_then(convert::micros_to_proto),
        expected_latest: row.expected_latest.and_then(convert::micros_to_proto),
        provider_reference: row.provider_reference.clone(),
        fast_refund: row.fast_refund,
        attempts: i32::try_from(row.attempts).unwrap_or(i32::MAX),
        failure_reason: row.failure_reason.clone(),
        created_at: convert::micros_to_proto(row.created_at),
        updated_at: convert::micros_to_proto(row.updated_at),
        released_at: row.released_at.and_then(convert::micros_to_proto),
        succeeded_at: row.succeeded_at.and_then(convert::micros_to_proto),
        status_reason: row.status_reason.clone(),
        note: row.note.clone(),
    }
}

pub fn refunds(rows: &[RefundRow]) -> Vec<pb::Refund> {
    rows.iter().map(refund).collect()
}

pub fn capture(row: &CaptureRow, balance: &CaptureBalance) -> Result<pb::Capture, ApiError> {
    Ok(pb::Capture {
        order_id: row.order_id.to_string(),
        buyer_id: row.buyer_id.to_string(),
        amount: Some(row.amount.into()),
        payment_method: row.method.to_wire(),
        buyer_tier: row.tier.to_wire(),
        captured_at: convert::micros_to_proto(row.captured_at),
        payment_reference: row.payment_reference.clone(),
        refunded: Some(balance.refunded.into()),
        charged_back: Some(balance.charged_back.into()),
        refundable: Some(balance.refundable()?.into()),
        created_at: convert::micros_to_proto(row.created_at),
    })
}

pub fn chargeback(row: &ChargebackRow) -> pb::Chargeback {
    pb::Chargeback {
        chargeback_id: row.chargeback_id.clone(),
        order_id: row.order_id.to_string(),
        amount: Some(row.amount.into()),
        network_reference: row.network_reference.clone(),
        reason: row.reason.clone(),
        opened_at: convert::micros_to_proto(row.opened_at),
        created_at: convert::micros_to_proto(row.created_at),
    }
}
