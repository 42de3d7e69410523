-- Addresses whose free trial is used up, kept past the account: closing an account and
-- registering the same address again must not give a second trial. Only a SHA-256 of the
-- normalized address is kept (a closed account keeps nothing that names the person).
CREATE TABLE trial_claims (
    email_hash TEXT    PRIMARY KEY CHECK (length(email_hash) = 64),
    claimed_at INTEGER NOT NULL
);
