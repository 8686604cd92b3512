// Reads customers through node-postgres, once as a plain query and once as
// a named prepared statement, and prints every value with its JavaScript
// type as JSON. Usage: node node_pg.cjs CONNECTION_STRING
const { Client } = require('pg');

const ROWS = 50;
const COLUMNS = ['id', 'full_name', 'email', 'card_number', 'national_id', 'birth_date',
  'balance', 'is_active', 'ip_address', 'external_ref', 'created_at'];

function cell(v) {
  if (v === null) return { type: 'null', value: null };
  if (v instanceof Date) return { type: 'Date', value: v.toISOString() };
  return { type: typeof v, value: String(v) };
}

async function main() {
  const client = new Client({ connectionString: process.argv[2] });
  await client.connect();
  const sql = `SELECT ${COLUMNS.join(', ')} FROM customers WHERE id <= $1 ORDER BY id`;
  const plain = await client.query(sql, [ROWS]);
  const named = await client.query({ name: 'customers_page', text: sql, values: [ROWS] });
  const again = await client.query({ name: 'customers_page', text: sql, values: [ROWS] });
  const rows = (r) => r.rows.map((row) => COLUMNS.map((c) => cell(row[c])));
  console.log(JSON.stringify({
    columns: COLUMNS, plain: rows(plain), named: rows(named), again: rows(again),
  }));
  await client.end();
}

main().catch((e) => { console.error(e.message); process.exit(1); });
