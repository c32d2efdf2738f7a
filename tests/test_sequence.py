"""FISP schedule: the Jiang default, hashing, file and ISMRMRD header round trips, and bad input."""

import json

import ismrmrd
import numpy as np
import pytest

from mrf_core.physics.sequence import FispSchedule, ScheduleError, default_schedule, load_schedule


def empty_header():
    conditions = ismrmrd.xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_740_000)
    return ismrmrd.xsd.ismrmrdHeader(experimentalConditions=conditions)


def test_default_is_jiang_2015():
    s = default_schedule()
    assert s.n_timepoints == 1000
    assert s.tr_ms.min() == pytest.approx(11.67, abs=0.01) and s.tr_ms.max() == pytest.approx(14.33, abs=0.01)
    # five half-sine lobes peaking at 35, 43, 70, 45, 27 deg, separated by zero-flip gaps
    lobes = np.split(s.flip_angle_deg, np.flatnonzero(np.diff((s.flip_angle_deg > 0).astype(int)) == 1) + 1)
    assert [round(lobe.max()) for lobe in lobes] == [35, 43, 70, 45, 27]
    assert (s.flip_angle_deg == 0).sum() > 0
    assert s.inversion and s.te_ms == 2.0


def test_hash_stable_through_json_csv_and_header(tmp_path):
    s = default_schedule()
    for name in ("s.json", "s.csv"):
        s.save(tmp_path / name)
        back = FispSchedule.load(tmp_path / name)
        assert back.hash == s.hash and back == s
        np.testing.assert_allclose(back.flip_angle_deg, s.flip_angle_deg)
    header = empty_header()
    s.to_ismrmrd(header)
    parsed = ismrmrd.xsd.CreateFromDocument(ismrmrd.xsd.ToXML(header))
    assert FispSchedule.from_ismrmrd(parsed).hash == s.hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.json"]  # no temporary files left
    assert (tmp_path / "s.json").stat().st_mode & 0o044  # readable by others, like a plain open()


def test_hash_sees_signal_shaping_fields_not_the_name():
    s = default_schedule()
    from dataclasses import replace

    assert replace(s, name="other").hash == s.hash
    for change in ({"te_ms": 2.5}, {"ti_ms": 20.0}, {"inversion": False}, {"rf_phase_deg": 90.0}):
        assert replace(s, **change).hash != s.hash, change
    assert s.truncated(200).hash != s.hash and s.truncated(200).n_timepoints == 200


def test_header_without_inversion_round_trips():
    s = FispSchedule([10, 20, 30], [12, 12, 13], te_ms=1.5, inversion=False)
    header = empty_header()
    s.to_ismrmrd(header)
    back = FispSchedule.from_ismrmrd(ismrmrd.xsd.CreateFromDocument(ismrmrd.xsd.ToXML(header)))
    assert back.inversion is False and back.hash == s.hash


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"flip_angle_deg": [10, 20], "tr_ms": [12.0]}, "tr_ms has 1"),
        ({"flip_angle_deg": [10, 20], "tr_ms": [12.0, 0.0]}, "tr_ms[1] = 0.0"),
        ({"flip_angle_deg": [10, np.nan], "tr_ms": [12.0, 12.0]}, "flip_angle_deg[1] = nan"),
        ({"flip_angle_deg": [10, 200], "tr_ms": [12.0, 12.0]}, "flip_angle_deg[1] = 200"),
        ({"flip_angle_deg": [10, 20], "tr_ms": [12.0, 3.0], "te_ms": 5.0}, "te_ms = 5.0 is longer than tr_ms[1]"),
        ({"flip_angle_deg": [], "tr_ms": []}, "no time points"),
    ],
)
def test_bad_schedule_names_field_and_value(kwargs, field):
    with pytest.raises(ScheduleError, match=field.replace("[", r"\[").replace("]", r"\]")):
        FispSchedule(**kwargs)


def test_bad_files(tmp_path):
    edited = default_schedule().to_dict()
    edited["tr_ms"][3] += 1.0
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ScheduleError, match="edited"):
        FispSchedule.load(tmp_path / "edited.json")
    (tmp_path / "bad.csv").write_text("index,flip_angle_deg,tr_ms\n0,10,abc\n")
    with pytest.raises(ScheduleError, match="tr_ms = 'abc'"):
        FispSchedule.load(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("fa,tr\n1,2\n")
    with pytest.raises(ScheduleError, match="no column 'flip_angle_deg'"):
        load_schedule(tmp_path / "cols.csv")
    with pytest.raises(ScheduleError, match="cannot read"):
        load_schedule(tmp_path / "missing.csv")
    with pytest.raises(ScheduleError, match=r"n_timepoints = 2000"):
        default_schedule().truncated(2000)


def test_header_without_schedule_is_named():
    header = empty_header()
    with pytest.raises(ScheduleError, match="no sequenceParameters"):
        FispSchedule.from_ismrmrd(header)
    header.sequenceParameters = ismrmrd.xsd.sequenceParametersType(TR=[12.0])
    with pytest.raises(ScheduleError, match="no flipAngle_deg"):
        FispSchedule.from_ismrmrd(header)
    header.sequenceParameters = ismrmrd.xsd.sequenceParametersType(TR=[12.0], flipAngle_deg=[10.0])
    with pytest.raises(ScheduleError, match="no TE"):
        FispSchedule.from_ismrmrd(header)


def test_save_failure_leaves_nothing(tmp_path):
    target = tmp_path / "nofolder" / "s.json"
    with pytest.raises(FileNotFoundError):
        default_schedule().save(target)
    assert not (tmp_path / "nofolder").exists()
