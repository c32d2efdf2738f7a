"""The Gadgetron/MRD wire protocol without Gadgetron: framing, stream configurations, external stages.

`mrf replay` and `mrf serve` play Gadgetron's side of the sockets exactly as Gadgetron 4's External node
(nodes/External.cpp, external/Python.cpp; the details are in external's docstring) does: each `<external>`
node of a stream configuration runs as its own `python -m gadgetron <port> <module> <target>` process
(started through stage_main, which ties it to our lifetime first) that connects back to us; it gets its
node's `<configuration>` (message 2), the header (3), the items, and CLOSE (4). This process never imports
gadgetron.

Modules: messages (framing, bounded sizes), stream_config (parse and locate configurations), external
(one stage process), stage_main (a stage process's entry point), chain (a configuration's stages relayed
in a row), replay (a raw file through a chain into a map file), server (the Gadgetron client protocol on
a TCP port), client (the client's side of that protocol, `mrf send`).
"""
