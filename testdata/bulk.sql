-- pgveil bulk-read data set: one table of 1,000,000 synthetic people.
--
-- Used by bench/run.sh to time a full "SELECT * FROM bulk_people" through
-- each target. Rows are computed from generate_series() with arithmetic
-- over fixed name arrays (no random()), so every load is identical.
--
--   psql -X -v ON_ERROR_STOP=1 -d DBNAME -f testdata/bulk.sql

SET client_min_messages = warning;

DROP TABLE IF EXISTS public.bulk_people;

CREATE TABLE public.bulk_people (
    id         bigint,
    email      text,
    name       text,
    ssn        text,
    created_at timestamp
);

INSERT INTO public.bulk_people (id, email, name, ssn, created_at)
SELECT
    n,
    lower(f) || '.' || lower(l) || '.' || n::text || '@'
        || (ARRAY['example.com', 'example.org', 'example.net', 'mail.example'])[1 + n % 4],
    f || ' ' || l,
    lpad((1 + (n * 37) % 665)::text, 3, '0') || '-'
        || lpad((1 + (n * 11) % 99)::text, 2, '0') || '-'
        || lpad((1 + (n * 7919) % 9999)::text, 4, '0'),
    timestamp '2015-01-01 00:00:00' + n * interval '4 minutes 17 seconds'
FROM (
    SELECT
        n,
        (ARRAY['Ada', 'Ben', 'Cleo', 'Dev', 'Elena', 'Femi', 'Gus', 'Hana', 'Ivo', 'Jun',
               'Kira', 'Leo', 'Maya', 'Nils', 'Omar', 'Pia', 'Quinn', 'Rosa', 'Sami', 'Tess',
               'Uma', 'Vik', 'Wren', 'Xia', 'Yusuf', 'Zara'])[1 + (n * 7) % 26] AS f,
        (ARRAY['Abbott', 'Baker', 'Carter', 'Dalton', 'Ellis', 'Fischer', 'Grant', 'Hughes',
               'Ibarra', 'Jensen', 'Keller', 'Lambert', 'Mercer', 'Nolan', 'Ortega', 'Price',
               'Quade', 'Reyes', 'Sutton', 'Tanaka', 'Ueda', 'Vance', 'Walsh', 'Young',
               'Zeller', 'Moreau', 'Silva', 'Novak', 'Berg', 'Hale', 'Cruz'])[1 + (n * 11 + n / 26) % 31] AS l
    FROM generate_series(1::bigint, 1000000) AS g(n)
) s;

ANALYZE public.bulk_people;
