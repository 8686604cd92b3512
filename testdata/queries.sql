-- pgveil equivalence queries.
--
-- Run this file twice with psql against a database loaded from
-- testdata/schema.sql: once straight at PostgreSQL and once through the
-- gateway (with masking off). Both runs must print byte-identical output,
-- stdout and stderr alike:
--
--   psql -X -h HOST -p PORT -U USER -d DB -f testdata/queries.sql > out.txt 2>&1
--
-- ON_ERROR_STOP is deliberately left off: a few statements below fail on
-- purpose and psql must carry on after them. Every query orders its rows,
-- nothing reads the clock, the connecting role, the backend PID or other
-- per-connection facts, and nothing changes the stored data (writes go to
-- temporary tables or are rolled back), so the file can be run again and
-- again on the same database.

\set ECHO queries
\pset null '(null)'
\pset pager off

-- 1. Session parameters: SET and SHOW.
SET TIME ZONE 'UTC';
SET DateStyle = 'ISO, MDY';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 0;
SHOW TimeZone;
SHOW DateStyle;
SET search_path = public, pg_catalog;
SHOW search_path;
SET application_name = 'pgveil-equivalence';
SHOW application_name;
SHOW server_encoding;
SHOW client_encoding;
SHOW standard_conforming_strings;

-- 2. Row counts.
SELECT (SELECT count(*) FROM customers) AS customers,
       (SELECT count(*) FROM orders)    AS orders;

-- 3. Every column type, first rows in key order.
SELECT * FROM customers WHERE id <= 20 ORDER BY id;

-- 4. Non-ASCII text: the hand-picked names and a sample of accented ones.
SELECT id, full_name, email, city,
       length(full_name) AS chars, octet_length(full_name) AS bytes
FROM customers
WHERE full_name !~ '^[ -~]*$' OR city !~ '^[ -~]*$'
ORDER BY id
LIMIT 25;

-- 5. NULLs: how many per optional column, and rows with several missing.
SELECT count(*) - count(email)       AS no_email,
       count(*) - count(phone)       AS no_phone,
       count(*) - count(card_number) AS no_card,
       count(*) - count(national_id) AS no_ssn,
       count(*) - count(birth_date)  AS no_birth_date,
       count(*) - count(city)        AS no_city,
       count(*) - count(notes)       AS no_notes,
       count(*) - count(is_active)   AS no_active_flag,
       count(*) - count(ip_address)  AS no_ip
FROM customers;
SELECT id, full_name, email, phone, card_number, national_id, birth_date, city, ip_address
FROM customers
WHERE (email IS NULL)::int + (phone IS NULL)::int + (card_number IS NULL)::int
    + (national_id IS NULL)::int + (city IS NULL)::int >= 2
ORDER BY id;

-- 6. Empty string versus NULL.
SELECT notes IS NULL AS is_null, notes = '' AS is_empty, count(*)
FROM customers
GROUP BY 1, 2
ORDER BY 1, 2;

-- 7. Column types as the server sees them.
SELECT pg_typeof(id) AS id, pg_typeof(full_name) AS full_name, pg_typeof(birth_date) AS birth_date,
       pg_typeof(created_at) AS created_at, pg_typeof(balance) AS balance,
       pg_typeof(is_active) AS is_active, pg_typeof(ip_address) AS ip_address,
       pg_typeof(external_ref) AS external_ref
FROM customers WHERE id = 1;

-- 8. inet: IPv4, IPv6 and network values.
SELECT id, ip_address, family(ip_address) AS family, masklen(ip_address) AS masklen,
       host(ip_address) AS host
FROM customers
WHERE ip_address IS NOT NULL AND (family(ip_address) = 6 OR masklen(ip_address) < 32)
ORDER BY id
LIMIT 20;

-- 9. uuid ordering and text form.
SELECT external_ref, id FROM customers ORDER BY external_ref LIMIT 10;

-- 10. numeric aggregates.
SELECT sum(balance) AS total, round(avg(balance), 4) AS mean,
       min(balance) AS lowest, max(balance) AS highest,
       count(*) FILTER (WHERE balance < 0) AS overdrawn
FROM customers;

-- 11. Dates and intervals against a fixed reference day.
SELECT id, birth_date, age(date '2024-06-30', birth_date) AS age_on_2024_06_30,
       extract(isodow FROM birth_date) AS iso_weekday
FROM customers
WHERE birth_date IS NOT NULL
ORDER BY birth_date, id
LIMIT 10;

-- 12. timestamptz rendered in other zones, then back to UTC.
SET TIME ZONE 'America/New_York';
SELECT id, created_at FROM customers WHERE id IN (1, 2, 3, 500, 1000) ORDER BY id;
SELECT id, created_at AT TIME ZONE 'Asia/Kolkata' AS kolkata_local
FROM customers WHERE id IN (1, 500, 1000) ORDER BY id;
SET TIME ZONE 'UTC';
SELECT id, created_at FROM customers WHERE id IN (1, 500, 1000) ORDER BY id;

-- 13. bool, including the NULL group.
SELECT is_active, count(*) FROM customers GROUP BY is_active ORDER BY is_active NULLS FIRST;

-- 14. Join: customers with the largest order totals.
SELECT c.id, c.full_name, count(o.id) AS orders, sum(o.amount) AS total
FROM customers c
JOIN orders o ON o.customer_id = c.id
GROUP BY c.id, c.full_name
ORDER BY total DESC, c.id
LIMIT 10;

-- 15. CTE: revenue per month for delivered orders.
WITH delivered AS (
    SELECT date_trunc('month', ordered_at) AS month, amount
    FROM orders
    WHERE status = 'delivered'
)
SELECT to_char(month, 'YYYY-MM') AS month, count(*) AS orders, sum(amount) AS revenue
FROM delivered
GROUP BY month
ORDER BY month;

-- 16. Window functions: running total and rank per customer.
SELECT customer_id, id, amount,
       sum(amount) OVER (PARTITION BY customer_id ORDER BY id) AS running_total,
       rank() OVER (PARTITION BY customer_id ORDER BY amount DESC, id) AS amount_rank
FROM orders
WHERE customer_id IN (7, 42, 99)
ORDER BY customer_id, id;

-- 17. The view.
SELECT * FROM customer_contacts WHERE id BETWEEN 1 AND 15 ORDER BY id;

-- 18. Several statements on one line. The first line is split by psql into
-- two queries; with \; the second reaches the server as one query string.
SELECT 1 AS one; SELECT 2 AS two;
SELECT 'a' AS first_result \; SELECT 'b' AS second_result \; SELECT 3 AS third_result;

-- 19. Errors; psql reports each and goes on.
SELECT 1 / 0 AS boom;
SELECT * FROM no_such_table;
SELEC 1;
SELECT id FROM customers WHERE id = 'not a number';
SELECT 'before' AS step \; SELECT 1 / 0 \; SELECT 'after' AS step;
SELECT 'still connected' AS status;

-- 20. A transaction that is rolled back, with a savepoint and an error.
BEGIN;
UPDATE customers SET balance = 0 WHERE id <= 10;
SELECT sum(balance) AS balance_inside FROM customers WHERE id <= 10;
SAVEPOINT before_delete;
DELETE FROM orders WHERE customer_id = 1;
SELECT count(*) AS orders_of_1_after_delete FROM orders WHERE customer_id = 1;
ROLLBACK TO SAVEPOINT before_delete;
SELECT count(*) AS orders_of_1_restored FROM orders WHERE customer_id = 1;
SELECT 1 / 0;
SELECT 'ignored because the transaction is aborted';
ROLLBACK;
SELECT sum(balance) AS balance_after_rollback FROM customers WHERE id <= 10;

-- 21. SET LOCAL lasts only until the end of its transaction.
BEGIN;
SET LOCAL TIME ZONE 'Pacific/Auckland';
SHOW TimeZone;
COMMIT;
SHOW TimeZone;

-- 22. COPY out: psql's \copy and the server-side COPY ... TO STDOUT.
\copy (SELECT id, full_name, email, phone, national_id FROM customers WHERE id <= 10 ORDER BY id) TO STDOUT
\copy (SELECT id, full_name, notes FROM customers WHERE id IN (3, 4, 5, 7, 777) ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)
COPY (SELECT id, customer_id, amount, status, shipping_address FROM orders WHERE id <= 1000012 ORDER BY id) TO STDOUT;

-- 23. COPY in, into a temporary table, from the lines that follow.
CREATE TEMP TABLE copy_in (id int, name text, note text);
COPY copy_in FROM STDIN;
1	Zoë Ångström	first line
2	José Núñez	\N
3	Łukasz Wąs	tab\there and a backslash \\ here
\.
SELECT * FROM copy_in ORDER BY id;
DROP TABLE copy_in;

-- 24. Notices and warnings, alone and mixed with rows.
DO $$ BEGIN RAISE NOTICE 'hello'; END $$;
DO $$ BEGIN RAISE WARNING 'careful: % rows', 3 USING HINT = 'just a test'; END $$;
CREATE FUNCTION pg_temp.noisy(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'visiting %', n;
    RETURN n * n;
END $$;
SELECT pg_temp.noisy(i) AS square FROM generate_series(1, 3) AS g(i) ORDER BY i;
DROP FUNCTION pg_temp.noisy(int);

-- 25. SQL-level prepared statements.
PREPARE by_city(text) AS
    SELECT id, full_name, city FROM customers WHERE city = $1 ORDER BY id LIMIT 5;
EXECUTE by_city('Zürich');
EXECUTE by_city('Reykjavík');
DEALLOCATE by_city;

-- 26. Statements without rows, with no columns, and with RETURNING.
SELECT * FROM customers WHERE false;
SELECT;
CREATE TEMP TABLE scratch (k int PRIMARY KEY, v text);
INSERT INTO scratch VALUES (1, 'one'), (2, 'two') RETURNING *;
UPDATE scratch SET v = upper(v) WHERE k = 2 RETURNING k, v;
DROP TABLE scratch;

-- 27. Awkward literals.
SELECT E'tab\there' AS tab, 'it''s' AS quote, E'back\\slash' AS backslash,
       E'two\nlines' AS newline, '🐘 ✓' AS symbols, '' AS empty, NULL::text AS nothing;

-- 28. Every card number passes the Luhn check (computed in plain SQL).
SELECT count(*) AS cards,
       count(*) FILTER (WHERE luhn_sum % 10 = 0) AS luhn_valid
FROM (
    SELECT c.id, sum(CASE WHEN d.pos % 2 = 0
                          THEN (d.digit * 2) / 10 + (d.digit * 2) % 10
                          ELSE d.digit END) AS luhn_sum
    FROM customers c
    CROSS JOIN LATERAL (
        SELECT p AS pos, substr(reverse(c.card_number), p, 1)::int AS digit
        FROM generate_series(1, length(c.card_number)) AS s(p)
    ) d
    WHERE c.card_number IS NOT NULL
    GROUP BY c.id
) per_card;

-- 29. Free-text notes that embed contact data.
SELECT id, notes FROM customers
WHERE notes ~ '@|[0-9]{3}[- ][0-9]{4}|[0-9]{4} [0-9]{4}'
ORDER BY id
LIMIT 12;

-- 30. One wide value (all e-mail addresses in one row).
SELECT length(s) AS chars, s AS all_emails
FROM (SELECT string_agg(email, ',' ORDER BY id) AS s FROM customers) t;

-- 31. Fingerprints of the whole tables.
SELECT md5(string_agg(c::text, E'\n' ORDER BY id)) AS customers_md5 FROM customers c;
SELECT md5(string_agg(o::text, E'\n' ORDER BY id)) AS orders_md5 FROM orders o;

-- 32. Other psql output formats.
\x on
SELECT * FROM customers WHERE id = 42;
\x off
\pset format unaligned
SELECT id, full_name, balance FROM customers WHERE id IN (7, 99, 512) ORDER BY id;
\pset format csv
SELECT id, full_name, notes FROM customers WHERE id IN (4, 777) ORDER BY id;
\pset format aligned

-- 33. psql's catalog queries.
\d customers
\d+ customer_contacts

-- 34. All orders, to stream a few thousand rows.
SELECT * FROM orders ORDER BY id;
