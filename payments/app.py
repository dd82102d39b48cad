"""ecard's payments HTTP surface: the acquirer's webhook and the parents' endpoints.

``payments_router(service)`` is a Litestar Router mountable in any Litestar app (add
``service.close`` to the app's ``on_shutdown``); ``create_app(service)`` is the standalone
app of ``python -m payments serve``.

  POST   /payments/webhook                            signed acquirer events (payments/webhook.py)
  POST   /children/{account_id}/topups                Bearer, Idempotency-Key (payments/topups.py)
  GET    /children/{account_id}/topups/{payment_id}   Bearer
  GET    /children/{account_id}/auto-topup            Bearer
  PUT    /children/{account_id}/auto-topup            Bearer
  DELETE /children/{account_id}/auto-topup            Bearer
  GET    /saved-cards                                  Bearer
  DELETE /saved-cards/{saved_card_id}                  Bearer

Every refusal is a 4xx with a JSON body ``{code, message}``; an unexpected error is a 500 in
the same shape, logged with its traceback.
"""

from __future__ import annotations

from litestar import Litestar, Request, Response, Router, delete, get, post, put
from litestar.params import FromPath

from . import signing
from .topups import ParentPayments
from .webhook import WEBHOOK_PATH, PaymentsService, on_exception


def payments_router(service: PaymentsService, path: str = "/") -> Router:
    family = ParentPayments(service)

    def auth(request: Request) -> str | None:
        return request.headers.get("authorization")

    @post(WEBHOOK_PATH, status_code=200)
    async def webhook(request: Request) -> Response:
        return await service.handle_event(await request.body(), request.headers.get(signing.SIGNATURE_HEADER))

    @post("/children/{account_id:int}/topups")
    async def start_topup(account_id: FromPath[int], request: Request) -> Response:
        return await family.start_topup(auth(request), account_id, await request.body(),
                                        request.headers.get("idempotency-key"))

    @get("/children/{account_id:int}/topups/{payment_id:str}")
    async def topup_status(account_id: FromPath[int], payment_id: FromPath[str], request: Request) -> Response:
        return await family.topup_status(auth(request), account_id, payment_id)

    @get("/children/{account_id:int}/auto-topup")
    async def get_auto_topup(account_id: FromPath[int], request: Request) -> Response:
        return await family.get_auto_topup(auth(request), account_id)

    @put("/children/{account_id:int}/auto-topup")
    async def set_auto_topup(account_id: FromPath[int], request: Request) -> Response:
        return await family.set_auto_topup(auth(request), account_id, await request.body())

    @delete("/children/{account_id:int}/auto-topup", status_code=200)
    async def stop_auto_topup(account_id: FromPath[int], request: Request) -> Response:
        return await family.stop_auto_topup(auth(request), account_id)

    @get("/saved-cards")
    async def list_cards(request: Request) -> Response:
        return await family.list_cards(auth(request))

    @delete("/saved-cards/{saved_card_id:int}", status_code=200)
    async def revoke_card(saved_card_id: FromPath[int], request: Request) -> Response:
        return await family.revoke_card(auth(request), saved_card_id)

    return Router(
        path=path,
        route_handlers=[webhook, start_topup, topup_status, get_auto_topup, set_auto_topup, stop_auto_topup,
                        list_cards, revoke_card],
        exception_handlers={Exception: on_exception},
    )


def create_app(service: PaymentsService) -> Litestar:
    return Litestar(route_handlers=[payments_router(service)], on_shutdown=[service.close],
                    exception_handlers={Exception: on_exception})
