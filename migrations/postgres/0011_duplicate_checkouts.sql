-- A checkout whose subscription the customer approved while another PayPal subscription of
-- theirs was live: the id of that live subscription. Such a checkout changes nothing for the
-- customer; its payments are recorded for an operator to refund.
ALTER TABLE checkouts ADD COLUMN duplicate_of TEXT;
