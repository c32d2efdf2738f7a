"""The application around the library: the `mrf` command (cli/) and the Gadgetron host (host/: wire
framing, stream configurations, external stages, replay, server). Unlike mrf_core it knows where the
gadgets and the stream configurations (config_xml/, shipped as package data) live."""
