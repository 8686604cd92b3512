-- pgveil sample schema: synthetic customers and orders.
--
-- Every value below is made up. Rows are computed from generate_series()
-- with plain arithmetic over fixed name arrays (no random()), so loading
-- this file into an empty database always yields exactly the same rows.
-- Card numbers pass the Luhn check, national IDs use the US SSN layout
-- (NNN-NN-NNNN), e-mail domains are reserved example domains, and phone
-- numbers sit in the fictional 555-01xx range.
--
--   psql -X -v ON_ERROR_STOP=1 -d DBNAME -f testdata/schema.sql

SET client_min_messages = warning;
SET TIME ZONE 'UTC';
SET DateStyle = 'ISO, MDY';

BEGIN;

DROP VIEW IF EXISTS public.customer_contacts;
DROP TABLE IF EXISTS public.orders;
DROP TABLE IF EXISTS public.customers;

-- Luhn check digit for a string of decimal digits (helper, dropped below).
CREATE FUNCTION public.pgveil_luhn_digit(payload text) RETURNS int
LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$
DECLARE
    total int := 0;
    d     int;
    n     int := length(payload);
BEGIN
    FOR k IN 1 .. n LOOP
        d := substr(payload, n - k + 1, 1)::int;
        -- Once the check digit is appended, these positions are the even
        -- ones counted from the right, which Luhn doubles.
        IF k % 2 = 1 THEN
            d := d * 2;
            IF d > 9 THEN
                d := d - 9;
            END IF;
        END IF;
        total := total + d;
    END LOOP;
    RETURN (10 - total % 10) % 10;
END
$fn$;

-- Card number for a seed: Visa-like (16 digits), Mastercard-like (16) or
-- Amex-like (15) depending on the seed, always with a valid check digit.
CREATE FUNCTION public.pgveil_card(seed bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $fn$
    SELECT p || public.pgveil_luhn_digit(p)::text
    FROM (
        SELECT CASE seed % 3
                 WHEN 0 THEN '4' || lpad(((seed * 98245165379 + 27182818284590) % 100000000000000)::text, 14, '0')
                 WHEN 1 THEN '5' || (1 + seed % 5)::text
                                 || lpad(((seed * 4728820491 + 3141592653589) % 10000000000000)::text, 13, '0')
                 ELSE        '3' || (CASE WHEN seed % 2 = 0 THEN '4' ELSE '7' END)
                                 || lpad(((seed * 96174894127 + 161803398874) % 1000000000000)::text, 12, '0')
               END AS p
    ) s
$fn$;

-- Strip the accents that occur in the name arrays so e-mail local parts
-- stay ASCII whatever the database's collation.
CREATE FUNCTION public.pgveil_ascii(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $fn$
    SELECT lower(translate(t,
        'ÅÄÖØÉÜŁŚŻÓàáâãäåçèéêëìíîïñòóôõöøùúûüýłąćęńśźż',
        'AAOOEULSZOaaaaaaceeeeiiiinoooooouuuuylacenszz'))
$fn$;

CREATE TABLE public.customers (
    id           int PRIMARY KEY,
    full_name    text NOT NULL,
    email        text CHECK (email ~ '^[a-z0-9._+-]+@[a-z0-9.-]+\.[a-z]+$'),
    phone        text,
    card_number  text CHECK (card_number ~ '^[0-9]{15,16}$'),
    national_id  text CHECK (national_id ~ '^[0-9]{3}-[0-9]{2}-[0-9]{4}$'),
    birth_date   date,
    city         text,
    notes        text,
    created_at   timestamptz NOT NULL,
    balance      numeric(12,2) NOT NULL,
    is_active    bool,
    ip_address   inet,
    external_ref uuid NOT NULL UNIQUE
);

INSERT INTO public.customers
SELECT
    i,
    full_name,
    CASE WHEN i % 29 = 0 THEN NULL
         ELSE pgveil_ascii(first) || '.' || pgveil_ascii(last) || i::text || '@'
              || (ARRAY['example.com', 'example.org', 'example.net', 'mail.example', 'corp.example'])[1 + i % 5]
    END,
    CASE WHEN i % 23 = 0 THEN NULL
         WHEN i % 3 = 0 THEN '+1-' || (ARRAY['202', '312', '415', '617', '718', '503', '305'])[1 + i % 7]
                             || '-555-01' || lpad((i % 100)::text, 2, '0')
         WHEN i % 3 = 1 THEN '(' || (ARRAY['206', '212', '404', '512', '720', '808', '919'])[1 + i % 7]
                             || ') 555-01' || lpad(((i * 7) % 100)::text, 2, '0')
         ELSE '555-01' || lpad(((i * 13) % 100)::text, 2, '0')
    END,
    CASE WHEN i % 17 = 0 THEN NULL ELSE pgveil_card(i) END,
    CASE WHEN i % 19 = 0 THEN NULL
         ELSE lpad((1 + (i * 37) % 665)::text, 3, '0') || '-'
              || lpad((1 + (i * 11) % 99)::text, 2, '0') || '-'
              || lpad((1 + (i * 7919) % 9999)::text, 4, '0')
    END,
    CASE WHEN i % 31 = 0 THEN NULL
         ELSE date '1950-01-01' + (i * 9173) % (365 * 50)
    END,
    CASE WHEN i % 37 = 0 THEN NULL
         ELSE (ARRAY['Springfield', 'Riverton', 'Lakeside', 'Fairview', 'Greenville',
                     'São Paulo', 'Zürich', 'Kraków', 'Malmö', 'Reykjavík',
                     'Montréal', 'Oakridge', 'Milltown', 'Brookfield', 'Ashford'])[1 + (i * 7) % 15]
    END,
    CASE i % 10
        WHEN 0 THEN NULL
        WHEN 1 THEN 'Asked us to copy invoices to '
                    || pgveil_ascii(last) || '.billing@example.org as well.'
        WHEN 2 THEN 'Called from 415-555-0' || lpad(((i * 31) % 1000)::text, 3, '0')
                    || ' about a late delivery; promised a callback.'
        WHEN 3 THEN 'Paid the deposit with card '
                    || substr(c, 1, 4) || ' ' || substr(c, 5, 4) || ' '
                    || substr(c, 9, 4) || ' ' || substr(c, 13)
                    || ', please do not store it.'
        WHEN 4 THEN 'VIP since ' || (2010 + i % 12)::text || E'.\nPrefers phone contact.'
        WHEN 5 THEN 'Backup contact: ' || first || ' at +1 415 555 01'
                    || lpad((i % 100)::text, 2, '0') || ' or alt.' || i::text || '@example.net.'
        WHEN 6 THEN 'Disputed a charge of $' || ((i * 37) % 500)::text || '.00 — resolved.'
        WHEN 7 THEN ''
        WHEN 8 THEN 'Card on file ' || c || ' expires soon.'
        ELSE 'No remarks.'
    END,
    timestamptz '2019-03-01 08:00:00+00'
        + i * interval '7 hours 13 minutes 17 seconds'
        + (i % 7) * interval '0.123457 seconds',
    round(((i::bigint * 7919) % 1000000) / 100.0 - 2000, 2),
    CASE WHEN i % 97 = 0 THEN NULL ELSE i % 7 <> 0 END,
    CASE WHEN i % 41 = 0 THEN NULL
         WHEN i % 5 = 0 THEN ('2001:db8:' || to_hex(i) || '::' || to_hex(i * 3 % 65536))::inet
         WHEN i % 11 = 0 THEN ('198.51.100.0/' || (24 + i % 8)::text)::inet
         ELSE ((ARRAY['192.0.2.', '198.51.100.', '203.0.113.'])[1 + i % 3] || (1 + i % 254)::text)::inet
    END,
    md5('pgveil-customer-' || i::text)::uuid
FROM (
    SELECT
        i,
        first,
        last,
        CASE i
            WHEN 7   THEN 'Zoë Ångström'
            WHEN 42  THEN 'José Núñez'
            WHEN 99  THEN 'Łukasz Wąs'
            WHEN 512 THEN 'Søren Kierkegård'
            WHEN 777 THEN 'O''Brien-Smith, Mary Ann'
            ELSE first || ' ' || last
        END AS full_name,
        pgveil_card(i + 100000) AS c
    FROM (
        SELECT
            i,
            CASE i WHEN 7 THEN 'Zoë' WHEN 42 THEN 'José' WHEN 99 THEN 'Łukasz'
                   WHEN 512 THEN 'Søren' WHEN 777 THEN 'Mary'
                   ELSE (ARRAY['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer',
                               'Michael', 'Linda', 'David', 'Elizabeth', 'William', 'Barbara',
                               'Richard', 'Susan', 'Joseph', 'Jessica', 'Thomas', 'Sarah',
                               'Charles', 'Karen', 'Aisha', 'Wei', 'Priya', 'Mateo',
                               'Chloé', 'Björn', 'Anaïs', 'Hiroshi', 'Fatima', 'Olumide',
                               'Ingrid', 'Dmitri', 'Noémie', 'Rahul', 'Lucía', 'Kwame',
                               'Astrid', 'Tomás', 'Yara', 'Emil'])[1 + (i * 7) % 40]
            END AS first,
            CASE i WHEN 7 THEN 'Ångström' WHEN 42 THEN 'Núñez' WHEN 99 THEN 'Wąs'
                   WHEN 512 THEN 'Kierkegård' WHEN 777 THEN 'OBrien-Smith'
                   ELSE (ARRAY['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia',
                               'Miller', 'Davis', 'Rodriguez', 'Martinez', 'Hernandez', 'Lopez',
                               'Wilson', 'Anderson', 'Taylor', 'Moore', 'Jackson', 'Martin',
                               'Lee', 'Thompson', 'White', 'Harris', 'Clark', 'Lewis',
                               'Okafor', 'Nakamura', 'Müller', 'Novák', 'Østergaard', 'Chen',
                               'Kowalski', 'Patel', 'Haddad', 'Lindqvist', 'Rossi', 'Dubois',
                               'Schäfer', 'Ivanova', 'Mendes', 'Kaya'])[1 + (i * 13 + i / 40) % 40]
            END AS last
        FROM generate_series(1, 1000) AS g(i)
    ) n
) s;

CREATE TABLE public.orders (
    id               bigint PRIMARY KEY,
    customer_id      int NOT NULL REFERENCES public.customers (id),
    ordered_at       timestamptz NOT NULL,
    amount           numeric(10,2) NOT NULL,
    status           text NOT NULL,
    shipping_address text
);

INSERT INTO public.orders
SELECT
    1000000 + g,
    1 + (g * 37) % 1000,
    timestamptz '2021-01-01 00:00:00+00'
        + g * interval '1 hour 43 minutes 11 seconds',
    round(1 + ((g::bigint * 104729) % 50000) / 100.0, 2),
    status,
    CASE WHEN status = 'cancelled' OR g % 53 = 0 THEN NULL
         ELSE (1 + (g * 17) % 9899)::text || ' '
              || (ARRAY['Main St', 'Oak Ave', 'Maple Rd', 'Cedar Ln', 'Elm St', 'Pine Ct',
                        'Lake Dr', 'Hill Rd', 'Rue des Écoles', 'Bahnhofstraße'])[1 + g % 10]
              || ', '
              || (ARRAY['Springfield', 'Riverton', 'Lakeside', 'Fairview', 'Greenville',
                        'São Paulo', 'Zürich', 'Kraków', 'Malmö', 'Reykjavík',
                        'Montréal', 'Oakridge', 'Milltown', 'Brookfield', 'Ashford'])[1 + (g * 11) % 15]
              || ' ' || lpad(((g * 7919) % 100000)::text, 5, '0')
    END
FROM (
    SELECT g,
           (ARRAY['pending', 'paid', 'shipped', 'delivered', 'delivered', 'delivered',
                  'refunded', 'cancelled'])[1 + (g * 5 + g / 8) % 8] AS status
    FROM generate_series(1, 5000) AS s(g)
) o;

CREATE INDEX orders_customer_id_idx ON public.orders (customer_id);

CREATE VIEW public.customer_contacts AS
    SELECT id, full_name, email, phone FROM public.customers;

DROP FUNCTION public.pgveil_card(bigint);
DROP FUNCTION public.pgveil_luhn_digit(text);
DROP FUNCTION public.pgveil_ascii(text);

COMMIT;

ANALYZE public.customers;
ANALYZE public.orders;
