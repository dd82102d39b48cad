"""What the texts need besides the notice: the school (name, UTC offset, product names) and
the pupil's name, read through storage.deliveries and cached for ``ttl_ms``."""

from __future__ import annotations

import time
from collections import OrderedDict

import asyncpg

from storage.deliveries import SchoolReference, pupil_names, school_reference

from .config import PUPIL_NAMES_CACHED_MAX

# A product code missing from the cached list (a product added since) reloads the school's
# list, but not more often than this: a till that sends an unknown code all day does not
# turn every purchase into a read.
PRODUCTS_RELOAD_INTERVAL_MS = 10_000
UNKNOWN_SCHOOL = SchoolReference(name="школа", utc_offset_minutes=180, products={})


class ReferenceCache:
    def __init__(self, pool: asyncpg.Pool, ttl_ms: int, timeout_s: float) -> None:
        self.pool = pool
        self.ttl_ms = ttl_ms
        self.timeout_s = timeout_s
        self._schools: dict[int, tuple[float, SchoolReference]] = {}
        self._pupils: OrderedDict[int, tuple[float, str]] = OrderedDict()

    @staticmethod
    def _now_ms() -> float:
        return time.monotonic() * 1000

    async def school(self, school_id: int, product_codes: tuple[int, ...] = ()) -> SchoolReference:
        now = self._now_ms()
        cached = self._schools.get(school_id)
        if cached is not None:
            loaded_at, ref = cached
            fresh = now - loaded_at < self.ttl_ms
            missing = any(code not in ref.products for code in product_codes)
            if fresh and not (missing and now - loaded_at >= PRODUCTS_RELOAD_INTERVAL_MS):
                return ref
        async with self.pool.acquire() as conn:
            ref = await school_reference(conn, school_id, timeout_s=self.timeout_s) or UNKNOWN_SCHOOL
        self._schools[school_id] = (now, ref)
        return ref

    async def preload_pupils(self, account_ids: list[int]) -> None:
        """Read the names of those of ``account_ids`` not cached (or stale) in one statement: a
        claimed batch's, before its sends ask ``pupil`` one by one."""
        now = self._now_ms()
        missing = {a for a in account_ids
                   if (cached := self._pupils.get(a)) is None or now - cached[0] >= self.ttl_ms}
        if not missing:
            return
        async with self.pool.acquire() as conn:
            names = await pupil_names(conn, missing, timeout_s=self.timeout_s)
        for account_id in missing:
            self._remember(account_id, now, names.get(account_id) or f"Лицевой счёт № {account_id}")

    def _remember(self, account_id: int, now: float, name: str) -> None:
        self._pupils[account_id] = (now, name)
        self._pupils.move_to_end(account_id)
        while len(self._pupils) > PUPIL_NAMES_CACHED_MAX:
            self._pupils.popitem(last=False)

    async def pupil(self, account_id: int) -> str:
        cached = self._pupils.get(account_id)
        if cached is None or self._now_ms() - cached[0] >= self.ttl_ms:
            await self.preload_pupils([account_id])
            cached = self._pupils[account_id]
        self._pupils.move_to_end(account_id)
        return cached[1]
