"""The one settings table: its literal copies agree with the library, every gadget and the command line take
their options from it, and the stream configurations use only its names."""

from __future__ import annotations

import re

import pytest

from gadgets import emit, map_dictionary, map_network, reconstruct
from gadgets.in_process import configuration
from gadgets.properties import GadgetConfigError, read_properties
from mrf_core import settings as table
from mrf_core.settings import SETTINGS, SettingsError, defaults, for_stages, parse_settings
from mrf_gadgetron.cli import build_parser

GADGETS = (reconstruct, map_network, map_dictionary, emit)  # config_xml's properties: tests/test_config_xml.py


def test_literal_copies_agree_with_the_library():
    from mrf_core.mapping.maps import QUANTITIES
    from mrf_core.physics.dictionary import GRIDS
    from mrf_core.recon.coils import COIL_METHODS
    from mrf_core.recon.nufft import BACKENDS
    from mrf_core.recon.reconstruct import DEFAULT_ITERATIONS, METHODS, ReconSettings

    assert table.METHODS == METHODS and table.COIL_METHODS == COIL_METHODS and table.NUFFT_BACKENDS == BACKENDS
    assert set(table.GRIDS) == set(GRIDS) and table.QUANTITY_KEYS == tuple(q.key for q in QUANTITIES)
    from mrf_core.physics.slice_profile import PULSE_SHAPES

    assert table.PULSE_SHAPES == PULSE_SHAPES
    recon = ReconSettings()
    assert table.RECON_DEFAULTS == {
        "method": recon.method, "n_virtual_coils": recon.n_virtual_coils, "coil_energy": recon.coil_energy,
        "coil_method": recon.coil_method,
        "nufft_backend": recon.nufft_backend, "llr_lambda": recon.llr_lambda, "n_threads": recon.n_threads,
        "iterations": DEFAULT_ITERATIONS}


def test_the_defaults_parse_and_give_the_library_defaults():
    from mrf_core.pipeline import recon_settings
    from mrf_core.recon.reconstruct import ReconSettings

    values = defaults()
    assert recon_settings(values, "dictionary") == ReconSettings(psf_cache_dir=str(values.psf_cache_dir))
    assert (values.method, values.rank, values.mapper, values.coefficient_images) == ("llr", 0, "network", False)
    assert recon_settings(parse_settings({"coil_energy": "0.99"}), "dictionary").coil_energy == 0.99
    with pytest.raises(SettingsError, match="coil_energy = '0'"):
        parse_settings({"coil_energy": "0"})


def test_every_gadget_reads_its_stages_and_every_setting_has_a_reader():
    assert reconstruct.PROPERTIES == for_stages("gather", "recon")
    assert map_network.PROPERTIES == for_stages("network")
    assert map_dictionary.PROPERTIES == for_stages("dictionary")
    assert emit.PROPERTIES == for_stages("output")
    read = {s.name for gadget in GADGETS for s in gadget.PROPERTIES} | {s.name for s in for_stages("cli")}
    assert read == {s.name for s in SETTINGS}
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_the_command_line_has_a_flag_per_setting_with_the_tables_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens otherwise
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["reconstruct", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrap argparse's lines
    assert "(library default)" not in text and "default: None" not in text
    for setting in SETTINGS:
        shown = setting.default if setting.default else "empty"
        assert re.search(rf"{setting.flag} \[?VALUE\]? .*?\(default: {re.escape(shown)}\)", text), setting.name
    args = parser.parse_args(["reconstruct", "scan.h5", "-o", "maps.h5"])
    for setting in SETTINGS:  # unset flags take the table's default, parsed
        assert getattr(args, setting.name) == setting.parse(setting.default)
    args = parser.parse_args(["reconstruct", "scan.h5", "-o", "m.h5", "--method", "CG", "--coefficient-images"])
    assert args.method == "cg" and args.coefficient_images is True


def test_parse_errors_name_the_setting_and_what_it_accepts():
    with pytest.raises(SettingsError, match=r"here: setting rank = '-1': must be an integer in \[0, 64\]"):
        parse_settings({"rank": "-1"}, where="here")
    with pytest.raises(SettingsError, match="unknown setting 'rnak'"):
        parse_settings({"rnak": "1"})
    with pytest.raises(GadgetConfigError, match="reconstruct: unknown property 'search'; known: index_map"):
        read_properties(configuration({"search": "auto"}), reconstruct.PROPERTIES, "reconstruct")
    with pytest.raises(GadgetConfigError, match="property device = 'gpu': must be cpu, cuda or cuda:N"):
        read_properties(configuration({"device": "gpu"}), map_network.PROPERTIES, "map_network")
    assert read_properties(configuration({"device": "cuda:1"}), map_network.PROPERTIES, "m").device == "cuda:1"


@pytest.mark.repository
def test_the_readme_shows_the_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table.markdown_table() in readme, "README's table is stale: paste `python -m mrf_core.settings`"
