//! The parcel's journey: carrier scans (idempotent by the carrier's event id) and the
//! seller's inspection of the delivered return; each tells disputes and refunds through the
//! outbox.

use returns_domain::ids::LabelId;
use returns_domain::returns::{
    self as rules, InspectionResult, LabelStatus, PickupStatus, TrackingEventType,
};
use returns_domain::time::to_unix_micros;
use returns_platform::db::retry_conflicts;
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::{ApiError, Caller};
use returns_proto::convert;
use returns_proto::disputes::v1 as disputes_pb;
use returns_proto::labels::v1 as pb;
use returns_proto::refunds::v1 as refunds_pb;

use super::wire::{self, event_message, label_message, label_message_with};
use super::{LabelGrpc, caller_carrier, outbox};
use crate::store::tracking::EventRow;
use crate::store::{self, Encoded};

/// The longest inspection note kept.
const MAX_NOTES: usize = 4000;

impl LabelGrpc {
    /// ReportTrackingEvent. The carrier's `carrier_event_id` is the idempotency key (there
    /// is no `request_id`): the same scan again is acknowledged with the label as it is now,
    /// the same id for another scan is ALREADY_EXISTS.
    pub(super) async fn record_scan(
        &self,
        caller: &Caller,
        req: pb::ReportTrackingEventRequest,
    ) -> Result<pb::ReportTrackingEventResponse, ApiError> {
        let carrier = caller_carrier(caller)?;
        let event_id =
            convert::required_text("carrier_event_id", &req.carrier_event_id, wire::MAX_TEXT)?;
        let tracking =
            convert::required_text("tracking_number", &req.tracking_number, wire::MAX_TEXT)?;
        let kind: TrackingEventType = convert::enum_value("type", req.r#type)?;
        let occurred_at = convert::timestamp("occurred_at", req.occurred_at.as_ref())?;
        let response = retry_conflicts(|| async {
            let now = self.now();
            let at = to_unix_micros(now);
            let mut tx = self.db.begin_write().await?;
            // Lock the label first: concurrent scans of one label queue here, so the event
            // lookup below sees every scan committed before.
            let mut label =
                match store::labels::by_tracking_number(&mut tx, &tracking, self.db.for_update())
                    .await?
                {
                    Some(label) if label.provider_code == carrier => label,
                    _ => {
                        return Err(ApiError::not_found(
                            "label with tracking number",
                            tracking.clone(),
                        ));
                    }
                };
            if let Some(existing) = store::tracking::find(&mut tx, carrier, &event_id).await? {
                if existing.tracking_number != tracking || existing.kind != kind {
                    return Err(ApiError::AlreadyExists(format!(
                        "carrier_event_id {event_id:?} was already reported for another scan"
                    )));
                }
                let label = label_message(&mut tx, &label).await?;
                tx.commit().await?;
                return Ok((
                    false,
                    pb::ReportTrackingEventResponse {
                        label: Some(label),
                        event: Some(event_message(&existing)),
                    },
                ));
            }
            let (journey, effects) = rules::apply_scan(&label.journey()?, kind, occurred_at)?;
            if effects.pickup_confirmed {
                let reference = if req.details.is_empty() {
                    &event_id
                } else {
                    &req.details
                };
                let confirmed =
                    store::pickups::confirm_scheduled(&mut tx, &label.label_id, reference, at)
                        .await?;
                if !confirmed && label.status != LabelStatus::PickupScheduled {
                    return Err(ApiError::precondition(
                        "no_pickup_booked",
                        format!("label {} has no booked pickup to confirm", label.label_id),
                    ));
                }
            }
            if effects.accepted_by_carrier {
                store::pickups::close_open(&mut tx, &label.label_id, PickupStatus::Collected, at)
                    .await?;
            }
            let event = EventRow {
                provider_code: carrier.to_owned(),
                carrier_event_id: event_id.clone(),
                label_id: label.label_id,
                tracking_number: tracking.clone(),
                kind,
                occurred_at: to_unix_micros(occurred_at),
                location: req.location.clone(),
                details: req.details.clone(),
                received_at: at,
            };
            store::tracking::insert(tx.writes(), &event);
            label.status = journey.status;
            label.status_at = journey.status_at.map(to_unix_micros);
            label.accepted_at = journey.accepted_at.map(to_unix_micros);
            label.delivered_at = journey.delivered_at.map(to_unix_micros);
            label.updated_at = at;
            store::labels::save(tx.writes(), &label);
            if effects.accepted_by_carrier {
                outbox::journey_step(
                    tx.writes(),
                    &label,
                    refunds_pb::ReturnProgress::AcceptedByCarrier,
                    disputes_pb::ReturnEventType::AcceptedByCarrier,
                    journey.accepted_at.unwrap_or(occurred_at),
                    "",
                )?;
            }
            if effects.delivered {
                outbox::journey_step(
                    tx.writes(),
                    &label,
                    refunds_pb::ReturnProgress::Delivered,
                    disputes_pb::ReturnEventType::Delivered,
                    occurred_at,
                    "",
                )?;
            }
            // The journey as read, with this scan (its insert is deferred) in its place.
            let (mut events, pickup) = store::tracking::journey(&mut tx, &label.label_id).await?;
            let place = events.partition_point(|e| e.journey_order() <= event.journey_order());
            events.insert(place, event.clone());
            let response = pb::ReportTrackingEventResponse {
                event: Some(event_message(&event)),
                label: Some(label_message_with(&label, &events, pickup.as_ref())),
            };
            // The scan, the label's new state and the journey's outbox messages, pushed
            // above, in one statement.
            tx.take_writes().execute(&mut tx).await?;
            let made_work = tx.made_work();
            tx.commit().await?;
            Ok((made_work, response))
        })
        .await;
        let (made_work, response) = response?;
        if made_work {
            self.db.work_committed();
        }
        Ok(response)
    }

    /// RecordInspection: the seller's finding on a delivered return; refunds hears whether
    /// it passed, disputes what was found.
    pub(super) async fn inspect(
        &self,
        caller: &Caller,
        req: pb::RecordInspectionRequest,
    ) -> Result<pb::RecordInspectionResponse, ApiError> {
        let request_id = convert::request_id(&req.request_id)?;
        let label_id = &convert::id::<LabelId>("label_id", &req.label_id)?;
        let result: InspectionResult = convert::enum_value("result", req.result)?;
        let notes = &convert::text("notes", &req.notes, MAX_NOTES)?;
        let evidence_uris = req.evidence_uris.as_slice();
        let key = RequestKey::new("RecordInspection", caller, request_id.as_str(), &req);
        mutate(&self.db, &self.context, &key, |mut tx| async move {
            let now = self.now();
            let mut label = self.locked_label(&mut tx, caller, label_id).await?;
            rules::check_inspection(label.status)?;
            let inspection =
                wire::inspection_message(&caller.id, result, notes, evidence_uris, now);
            label.status = LabelStatus::Inspected;
            label.inspection = Some(Encoded(inspection));
            label.updated_at = to_unix_micros(now);
            store::labels::save(tx.writes(), &label);
            let progress = if result.passes() {
                refunds_pb::ReturnProgress::InspectionPassed
            } else {
                refunds_pb::ReturnProgress::InspectionFailed
            };
            let event = match result {
                InspectionResult::Accepted => disputes_pb::ReturnEventType::InspectionAccepted,
                InspectionResult::DamagedAsClaimed => {
                    disputes_pb::ReturnEventType::InspectionDamagedAsClaimed
                }
                InspectionResult::DamagedInTransit => {
                    disputes_pb::ReturnEventType::InspectionDamagedInTransit
                }
                InspectionResult::WrongOrEmpty => {
                    disputes_pb::ReturnEventType::InspectionWrongOrEmpty
                }
            };
            outbox::journey_step(tx.writes(), &label, progress, event, now, notes)?;
            let label = label_message(&mut tx, &label).await?;
            Ok((tx, pb::RecordInspectionResponse { label: Some(label) }))
        })
        .await
    }
}
