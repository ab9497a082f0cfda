-- Every ListDisputes filter has an index ending in the paging key, so a filtered page is an
-- index range scan at any depth.
DROP INDEX disputes_by_order;
CREATE INDEX disputes_by_order ON disputes (order_id, dispute_id);
CREATE INDEX disputes_by_state ON disputes (state, dispute_id);
