"""Live routing: an OpenAI-compatible gateway that routes by the plan (``gateway``),
emulated chip pools that behave like real serving engines (``emulator``), and an
open-loop load generator that measures what a client sees (``loadgen``).

All three are built on aiohttp (server and pooled client); routing decisions use
the policies in :mod:`tokenfleet.routing.policies`, shared with the simulator.
"""
