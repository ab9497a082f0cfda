//! Reports: GetSettlementReport, the ledger summed by day, currency, method and status.

use std::collections::BTreeMap;

use returns_domain::money::{CurrencyCode, Money};
use returns_domain::time::{Timestamp, to_unix_micros};
use returns_platform::ApiError;
use returns_proto::convert::{self, WireEnum};
use returns_proto::refunds::v1 as pb;

use super::RefundGrpc;
use crate::store::{self, ReportRow};

pub(super) async fn get_settlement_report(
    service: &RefundGrpc,
    req: pb::GetSettlementReportRequest,
) -> Result<pb::GetSettlementReportResponse, ApiError> {
    let start = convert::timestamp("start_time", req.start_time.as_ref())?;
    let end = convert::timestamp("end_time", req.end_time.as_ref())?;
    if end <= start {
        return Err(ApiError::invalid("end_time", "must be after start_time"));
    }
    let currency = if req.currency_code.is_empty() {
        None
    } else {
        Some(convert::currency("currency_code", &req.currency_code)?)
    };
    let rows = store::report_rows(
        &service.db,
        to_unix_micros(start),
        to_unix_micros(end),
        currency,
    )
    .await?;
    let report = build_report(rows, start, end, service.now())?;
    Ok(pb::GetSettlementReportResponse {
        report: Some(report),
    })
}

/// Turns ledger groups into the report; groups whose movements cancel out (a refund that
/// entered and left a status the same day) carry no information and are left out, which
/// keeps every total equal to the sum of its rows.
fn build_report(
    rows: Vec<ReportRow>,
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
) -> Result<pb::SettlementReport, ApiError> {
    let mut totals: BTreeMap<CurrencyCode, (i64, Money)> = BTreeMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if row.count == 0 && row.total_minor == 0 {
            continue;
        }
        let total = Money::new(row.currency, row.total_minor);
        let entry = totals
            .entry(row.currency)
            .or_insert((0, Money::zero(row.currency)));
        entry.0 += row.count;
        entry.1 = entry.1.checked_add(total).map_err(ApiError::internal)?;
        out.push(pb::SettlementReportRow {
            day: row.day,
            currency_code: row.currency.to_string(),
            payment_method: row.method.to_wire(),
            status: row.status.to_wire(),
            count: row.count,
            total: Some(total.into()),
        });
    }
    Ok(pb::SettlementReport {
        start_time: Some(convert::timestamp_to_proto(start)),
        end_time: Some(convert::timestamp_to_proto(end)),
        rows: out,
        totals: totals
            .into_iter()
            .map(|(currency, (count, total))| pb::SettlementReportTotal {
                currency_code: currency.to_string(),
                count,
                total: Some(total.into()),
            })
            .collect(),
        generated_at: Some(convert::timestamp_to_proto(now)),
    })
}
