"""Gadgetron external Python gadgets: thin adapters over mrf_core.

Targets for `<execute name="MODULE" target="FUNCTION" type="python"/>`:
gadgets.reconstruct:reconstruct, gadgets.map_network:map_network, gadgets.map_dictionary:map_dictionary,
gadgets.emit:emit. Importing the package installs the numpy-2 fix for gadgetron-python (gadgets.compat).
"""

from gadgets import compat

compat.install()
