//! The printable label: PDF, PNG or ZPL, rendered off the async workers.

use returns_domain::dispute::PostagePayer;
use returns_domain::ids::LabelId;
use returns_domain::returns::LabelStatus;
use returns_platform::{ApiError, Caller};
use returns_proto::convert::{self, FieldError};
use returns_proto::labels::v1 as pb;

use super::LabelGrpc;
use crate::document::{self, LabelDocument};
use crate::store;

impl LabelGrpc {
    pub(super) async fn label_document(
        &self,
        caller: &Caller,
        req: pb::GetLabelDocumentRequest,
    ) -> Result<pb::GetLabelDocumentResponse, ApiError> {
        let label_id: LabelId = convert::id("label_id", &req.label_id)?;
        // A rendering choice of this RPC only, not a domain vocabulary.
        let format = pb::DocumentFormat::try_from(req.format)
            .ok()
            .filter(|f| *f != pb::DocumentFormat::Unspecified)
            .ok_or_else(|| FieldError::new("format", "must be PDF, PNG or ZPL"))?;
        let mut conn = self.conn().await?;
        let label = self.visible_label(&mut conn, caller, &label_id, "").await?;
        conn.done();
        if label.status == LabelStatus::Voided {
            return Err(ApiError::precondition(
                "label_voided",
                format!("label {label_id} was voided and must not be printed"),
            ));
        }
        let doc = LabelDocument {
            tracking_number: label.tracking_number.clone(),
            carrier_name: self
                .directory
                .carrier(&label.provider_code)
                .map_or_else(|| label.provider_code.clone(), |c| c.name.clone()),
            method: label.method.code().replace('_', "-"),
            sender: label.sender.0.clone(),
            return_to: label.return_to.clone().map(|a| a.0),
            qr_payload: label.qr_payload.clone(),
            ship_by: store::instant(label.ship_by)?
                .format("%Y-%m-%d")
                .to_string(),
            paid_by: match label.paid_by {
                PostagePayer::Buyer => "BUYER DEDUCTED".to_owned(),
                other => format!("{} PREPAID", other.code()),
            },
            order_id: label.order_id.to_string(),
            label_id: label_id.to_string(),
        };
        let (content_type, extension) = match format {
            pb::DocumentFormat::Png => ("image/png", "png"),
            pb::DocumentFormat::Zpl => ("application/x-zpl", "zpl"),
            _ => ("application/pdf", "pdf"),
        };
        // Rendering is CPU work; keep it off the async workers.
        let content = tokio::task::spawn_blocking(move || match format {
            pb::DocumentFormat::Png => document::render_png(&doc),
            pb::DocumentFormat::Zpl => document::render_zpl(&doc),
            _ => document::render_pdf(&doc),
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
        Ok(pb::GetLabelDocumentResponse {
            content,
            content_type: content_type.to_owned(),
            file_name: format!("{}.{extension}", label.tracking_number),
        })
    }
}
