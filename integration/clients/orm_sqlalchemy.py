"""Reads customers through SQLAlchemy's ORM on psycopg (text results) and
through a psycopg binary cursor, and prints every value with its Python
type as JSON. Usage: orm_sqlalchemy.py HOST PORT USER DBNAME [PASSWORD]"""

import datetime
import decimal
import ipaddress
import json
import sys
import uuid

import psycopg
from sqlalchemy import create_engine, select
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROWS = 50


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    full_name: Mapped[str]
    email: Mapped[str | None]
    card_number: Mapped[str | None]
    national_id: Mapped[str | None]
    birth_date: Mapped[datetime.date | None]
    balance: Mapped[decimal.Decimal]
    is_active: Mapped[bool | None]
    ip_address: Mapped[str | None] = mapped_column(INET)
    external_ref: Mapped[uuid.UUID]
    created_at: Mapped[datetime.datetime]


COLUMNS = [c.name for c in Customer.__table__.columns]


def cell(v):
    return {"type": type(v).__name__, "value": None if v is None else str(v)}


def main():
    host, port, user, dbname = sys.argv[1:5]
    password = sys.argv[5] if len(sys.argv) > 5 else None
    url = URL.create("postgresql+psycopg", user, password, host, int(port), dbname)
    engine = create_engine(url)
    with Session(engine) as s:
        query = select(Customer).where(Customer.id <= ROWS).order_by(Customer.id)
        orm = [[cell(getattr(c, n)) for n in COLUMNS] for c in s.scalars(query)]
    engine.dispose()
    conninfo = psycopg.conninfo.make_conninfo(
        host=host, port=port, user=user, dbname=dbname, password=password
    )
    with psycopg.connect(conninfo) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(
            f"SELECT {', '.join(COLUMNS)} FROM customers WHERE id <= %s ORDER BY id",
            (ROWS,),
        )
        binary = [[cell(v) for v in row] for row in cur.fetchall()]
    print(json.dumps({"columns": COLUMNS, "orm": orm, "binary": binary}))


if __name__ == "__main__":
    main()
