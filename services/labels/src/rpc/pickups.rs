//! Courier pickups for PICKUP labels: booking a window and cancelling it.

use returns_domain::ids::LabelId;
use returns_domain::returns::{self as rules, LabelStatus, PickupStatus, ReturnMethod};
use returns_domain::time::to_unix_micros;
use returns_platform::mutation::{RequestKey, mutate};
use returns_platform::{ApiError, Caller};
use returns_proto::convert::{self, FieldError};
use returns_proto::labels::v1 as pb;

use super::LabelGrpc;
use super::wire::{self, label_message, pickup_message};
use crate::store::pickups::PickupRow;
use crate::store::{self, Encoded};

/// The longest pickup window a buyer may book. The rules give no number; couriers book
/// half-day slots, so twelve hours is the widest window that still means something.
pub const PICKUP_WINDOW_MAX_HOURS: i64 = 12;

impl LabelGrpc {
    /// SchedulePickup: books the courier for a CREATED pickup label, at the sender's address
    /// unless another in the courier's country is given.
    pub(super) async fn book_pickup(
        &self,
        caller: &Caller,
        req: pb::SchedulePickupRequest,
    ) -> Result<pb::SchedulePickupResponse, ApiError> {
        let request_id = convert::request_id(&req.request_id)?;
        let label_id = &convert::id::<LabelId>("label_id", &req.label_id)?;
        let start = convert::timestamp("window_start", req.window_start.as_ref())?;
        let end = convert::timestamp("window_end", req.window_end.as_ref())?;
        let address = &wire::optional_address("address", req.address.as_ref())?;
        let instructions = req.instructions.as_str();
        let key = RequestKey::new("SchedulePickup", caller, request_id.as_str(), &req);
        mutate(&self.db, &self.context, &key, |mut tx| async move {
            let now = self.now();
            rules::check_pickup_window(start, end, now, PICKUP_WINDOW_MAX_HOURS)?;
            let mut label = self.locked_label(&mut tx, caller, label_id).await?;
            if label.method != ReturnMethod::Pickup {
                return Err(ApiError::precondition(
                    "pickup_countries_only",
                    format!(
                        "label {label_id} is a {} label with {}; pickups are booked only for \
                         PICKUP labels in pickup countries",
                        label.method, label.provider_code
                    ),
                ));
            }
            if label.status != LabelStatus::Created {
                return Err(ApiError::precondition(
                    "state",
                    format!(
                        "cannot book a pickup while the label is {}; allowed in: CREATED \
                         (cancel the current pickup first)",
                        label.status
                    ),
                ));
            }
            let ship_by = store::instant(label.ship_by)?;
            if start > ship_by {
                return Err(ApiError::precondition(
                    "ship_by",
                    format!(
                        "the pickup window starts {} after the ship-by deadline {}",
                        start.format("%Y-%m-%d %H:%M UTC"),
                        ship_by.format("%Y-%m-%d %H:%M UTC")
                    ),
                ));
            }
            let pickup_address = match address {
                Some(asked) => {
                    // The courier collects only in the country it serves, which is where the
                    // label was issued (the order's delivery country).
                    let collects_in = self.directory.carrier(&label.provider_code).map_or_else(
                        || label.sender.0.country_code.clone(),
                        |c| c.country.clone(),
                    );
                    if asked.country_code != collects_in {
                        return Err(FieldError::new(
                            "address.country_code",
                            format!(
                                "must be {collects_in}, where {} collects for this label, not {}",
                                label.provider_code, asked.country_code
                            ),
                        )
                        .into());
                    }
                    asked.clone()
                }
                None => label.sender.0.clone(),
            };
            let at = to_unix_micros(now);
            let pickup = PickupRow {
                pickup_id: uuid::Uuid::now_v7().to_string(),
                label_id: label.label_id,
                provider_code: label.provider_code.clone(),
                window_start: to_unix_micros(start),
                window_end: to_unix_micros(end),
                address: Encoded(pickup_address),
                status: PickupStatus::Scheduled,
                confirmation_reference: String::new(),
                instructions: instructions.to_owned(),
                created_at: at,
                updated_at: at,
            };
            store::pickups::insert(&mut tx, &pickup).await?;
            label.status = LabelStatus::PickupScheduled;
            label.updated_at = at;
            store::labels::save(tx.writes(), &label);
            let label = label_message(&mut tx, &label).await?;
            let response = pb::SchedulePickupResponse {
                pickup: label.pickup.clone(),
                label: Some(label),
            };
            Ok((tx, response))
        })
        .await
    }

    /// CancelPickup: a scheduled or confirmed pickup is cancelled and its label can be
    /// booked again.
    pub(super) async fn cancel_booked_pickup(
        &self,
        caller: &Caller,
        req: pb::CancelPickupRequest,
    ) -> Result<pb::CancelPickupResponse, ApiError> {
        let request_id = convert::request_id(&req.request_id)?;
        let pickup_id = convert::external_id("pickup_id", &req.pickup_id)?;
        let pickup_id = pickup_id.as_str();
        let key = RequestKey::new("CancelPickup", caller, request_id.as_str(), &req);
        mutate(&self.db, &self.context, &key, |mut tx| async move {
            let now = self.now();
            let at = to_unix_micros(now);
            let mut pickup = store::pickups::by_id(&mut tx, pickup_id, self.db.for_update())
                .await?
                .ok_or_else(|| ApiError::not_found("pickup", pickup_id))?;
            // Someone who may not see the label is told the pickup does not exist.
            let mut label = self
                .locked_label(&mut tx, caller, &pickup.label_id)
                .await
                .map_err(|_| ApiError::not_found("pickup", pickup_id))?;
            if !pickup.status.is_open() {
                return Err(ApiError::precondition(
                    "state",
                    format!(
                        "cannot cancel a pickup that is {}; allowed in: SCHEDULED, CONFIRMED",
                        pickup.status
                    ),
                ));
            }
            store::pickups::cancel(&mut tx, pickup_id, at).await?;
            pickup.status = PickupStatus::Cancelled;
            pickup.updated_at = at;
            if label.status == LabelStatus::PickupScheduled {
                label.status = LabelStatus::Created;
                label.updated_at = at;
                store::labels::save(tx.writes(), &label);
            }
            let response = pb::CancelPickupResponse {
                pickup: Some(pickup_message(&pickup)),
                label: Some(label_message(&mut tx, &label).await?),
            };
            Ok((tx, response))
        })
        .await
    }
}
