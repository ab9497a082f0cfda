-- What a return report says beyond its step: the dispute it belongs to (so it reaches only
-- that dispute's refunds) and, for LABEL_CREATED, the deductions (JSON, like
-- refunds.deductions) a refund requested after the label must also carry.
ALTER TABLE return_events ADD COLUMN dispute_id TEXT NOT NULL DEFAULT '';
ALTER TABLE return_events ADD COLUMN deductions TEXT NOT NULL DEFAULT '[]';
