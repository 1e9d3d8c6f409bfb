"""
An intercept plugin in Python, built as a WebAssembly component with
componentize-py (see README.md beside this file).

Counter events: only even counts are delivered. Kafka events: the payload
is delivered in upper case; records without a payload are dropped for
clients that did not authenticate with a context.
"""

import wit_world
from wit_world.imports import intercept_types as kiwi


class WitWorld(wit_world.WitWorld):
    def intercept(self, ctx: kiwi.Context) -> kiwi.Action:
        event = ctx.event
        if isinstance(event, kiwi.EventCtx_Counter):
            if event.value.count % 2 == 0:
                return kiwi.Action_Forward()
            return kiwi.Action_Discard()
        payload = event.value.payload
        if payload is None:
            return kiwi.Action_Forward() if ctx.auth is not None else kiwi.Action_Discard()
        return kiwi.Action_Transform(kiwi.TransformedPayload_Kafka(payload.upper()))
