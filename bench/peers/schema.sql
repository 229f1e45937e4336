-- The PostgreSQL peer of RaftWallet's transfer path (bench/peers): the same rules
-- of money, written the way a careful PostgreSQL shop would write them.
--
-- Money is an integer count of minor units. A transfer is validated completely
-- before anything changes and follows RaftWallet's outcome rules (docs/ledger.md):
--
--   outcome              recorded under the id   money moves
--   OK                   yes                      yes
--   INSUFFICIENT_FUNDS   yes                      no
--   DUPLICATE            (already)                no   a retry, same content, of an OK transfer
--   NOT_FOUND            no                       no   an account does not exist
--   CURRENCY_MISMATCH    no                       no
--   SAME_ACCOUNT         no                       no
--   ID_CONFLICT          no                       no   the id is recorded with other content
--   INVALID_AMOUNT       no                       no   amount_minor <= 0
--
-- A retry with the same id and the same content is answered from the record:
-- DUPLICATE for a transfer that succeeded, the recorded INSUFFICIENT_FUNDS for
-- one that was refused (even if funds arrived in between), as RaftWallet does.
--
-- Deadlocks are avoided by locking rows in one global order (account_id): a
-- single transfer locks its two accounts in that order; a batch locks every
-- account it touches in that order before applying any of its transfers.

CREATE TABLE accounts (
    account_id    text PRIMARY KEY,
    currency      char(3) NOT NULL,
    balance_minor bigint NOT NULL CHECK (balance_minor >= 0)
);

CREATE TABLE transfers (
    transaction_id uuid PRIMARY KEY,          -- dedup: one record per id
    from_account   text NOT NULL,
    to_account     text NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
    currency       char(3) NOT NULL,
    outcome        text NOT NULL CHECK (outcome IN ('OK', 'INSUFFICIENT_FUNDS')),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX transfers_from_account ON transfers (from_account, created_at);
CREATE INDEX transfers_to_account ON transfers (to_account, created_at);

-- One transfer whose two accounts the caller has already locked (or will have
-- locked by the time it reads them: FOR UPDATE here takes the locks in order).
CREATE FUNCTION transfer_locked(p_from text, p_to text, p_amount_minor bigint,
                                p_currency char(3), p_txid uuid)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_from accounts%ROWTYPE;
    v_to accounts%ROWTYPE;
    v_row record;
    v_outcome text;
    v_inserted int;
BEGIN
    IF p_amount_minor IS NULL OR p_amount_minor <= 0 THEN
        RETURN 'INVALID_AMOUNT';
    END IF;
    IF p_from = p_to THEN
        RETURN 'SAME_ACCOUNT';
    END IF;
    -- Both rows, locked in account_id order (a no-op when a batch locked them).
    FOR v_row IN SELECT * FROM accounts WHERE account_id IN (p_from, p_to)
                 ORDER BY account_id FOR UPDATE LOOP
        IF v_row.account_id = p_from THEN
            v_from := v_row;
        ELSE
            v_to := v_row;
        END IF;
    END LOOP;
    IF v_from.account_id IS NULL OR v_to.account_id IS NULL THEN
        RETURN 'NOT_FOUND';
    END IF;
    IF v_from.currency <> p_currency OR v_to.currency <> p_currency THEN
        RETURN 'CURRENCY_MISMATCH';
    END IF;
    IF v_from.balance_minor < p_amount_minor THEN
        v_outcome := 'INSUFFICIENT_FUNDS';
    ELSE
        v_outcome := 'OK';
    END IF;
    -- The record first: a concurrent transfer with the same id waits here on the
    -- unique index, then sees it committed and is answered from it.
    INSERT INTO transfers (transaction_id, from_account, to_account, amount_minor,
                           currency, outcome)
    VALUES (p_txid, p_from, p_to, p_amount_minor, p_currency, v_outcome)
    ON CONFLICT (transaction_id) DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted = 0 THEN
        SELECT * INTO v_row FROM transfers WHERE transaction_id = p_txid;
        IF v_row.from_account = p_from AND v_row.to_account = p_to
           AND v_row.amount_minor = p_amount_minor AND v_row.currency = p_currency THEN
            RETURN CASE WHEN v_row.outcome = 'OK' THEN 'DUPLICATE' ELSE v_row.outcome END;
        END IF;
        RETURN 'ID_CONFLICT';
    END IF;
    IF v_outcome = 'OK' THEN
        UPDATE accounts SET balance_minor = balance_minor - p_amount_minor
        WHERE account_id = p_from;
        UPDATE accounts SET balance_minor = balance_minor + p_amount_minor
        WHERE account_id = p_to;
    END IF;
    RETURN v_outcome;
END;
$$;

-- The peer of the Transfer RPC: one transfer, one transaction (the caller's).
CREATE FUNCTION transfer(p_from text, p_to text, p_amount_minor bigint,
                         p_currency char(3), p_txid uuid)
RETURNS text
LANGUAGE sql AS $$
    SELECT transfer_locked(p_from, p_to, p_amount_minor, p_currency, p_txid);
$$;

-- The peer of the TransferBatch RPC: each transfer applied independently with
-- the semantics of transfer(), in order, in one transaction; one outcome per
-- transfer, in order. Every account the batch touches is locked first, in
-- account_id order, so concurrent batches and single transfers never deadlock.
CREATE FUNCTION transfer_batch(p_from text[], p_to text[], p_amount_minor bigint[],
                               p_currency char(3)[], p_txid uuid[])
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_count int := coalesce(cardinality(p_txid), 0);
    v_outcomes text[] := ARRAY[]::text[];
BEGIN
    IF coalesce(cardinality(p_from), 0) <> v_count OR coalesce(cardinality(p_to), 0) <> v_count
       OR coalesce(cardinality(p_amount_minor), 0) <> v_count
       OR coalesce(cardinality(p_currency), 0) <> v_count THEN
        RAISE EXCEPTION 'transfer_batch: arrays of different lengths'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM accounts
    WHERE account_id = ANY (p_from) OR account_id = ANY (p_to)
    ORDER BY account_id FOR UPDATE;
    FOR k IN 1 .. v_count LOOP
        v_outcomes := v_outcomes || transfer_locked(p_from[k], p_to[k], p_amount_minor[k],
                                                    p_currency[k], p_txid[k]);
    END LOOP;
    RETURN v_outcomes;
END;
$$;
