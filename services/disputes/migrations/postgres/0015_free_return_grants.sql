-- The free returns granted to a buyer in a month, as a row every opening that grants one
-- moves to its count: two openings that decided on the same count both write the same row,
-- and only the first can raise it, so they cannot both grant the last free return of the
-- month (a row lock on PostgreSQL, the one writer on SQLite). The disputes' own
-- free_return_month stays the count the opening rules read; this row only serialises.
CREATE TABLE free_return_grants (
    buyer_id TEXT NOT NULL,
    month TEXT NOT NULL,
    granted BIGINT NOT NULL,
    PRIMARY KEY (buyer_id, month)
);

-- The count the opening rules read (a buyer's free returns in a month) from a small index
-- rather than every dispute of the buyer.
CREATE INDEX disputes_free_returns ON disputes (buyer_id, free_return_month)
    WHERE free_return_month IS NOT NULL;
