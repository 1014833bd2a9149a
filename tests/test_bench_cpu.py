"""The CPU record of every benchmark result (nncomp/bench/cpu.py) and the per-CPU results folder."""
import json
import os

from nncomp.bench import cpu, timing
from nncomp.bench.__main__ import out_folder

SPR = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143", "stepping": "8",
       "model name": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.00GHz", "cpu MHz": "2000.000",
       "flags": "fpu avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"}
ZEN4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "stepping": "1", "model name": "AMD EPYC",
        "cpu MHz": "2596.138", "flags": "avx2 fma avx512f avx512_vnni avx512_bf16 hypervisor"}


def test_record_names_the_folder_flags_clock_of_known_cpus():
    rec = cpu.cpu_record(ZEN4)
    assert rec["results_folder"] == "amd-epyc-zen4"       # the folder committed results already use
    assert (rec["family"], rec["model"], rec["core"]) == (25, 17, "zen4") and rec["hypervisor"]
    assert rec["flags"]["avx512_vnni"] and not rec["flags"]["amx_int8"] and set(rec["flags"]) == set(cpu.FLAGS)
    assert rec["clock_mhz"]["current"] == 2596.1
    spr = cpu.cpu_record(SPR)
    assert spr["results_folder"] == "intel-xeon-sapphire-rapids"
    assert spr["flags"]["amx_int8"] and spr["flags"]["amx_tile"] and spr["clock_mhz"]["nominal"] == 2000.0
    text = cpu.describe(spr)
    assert "AMX INT8 BF16" in text and "2000 MHz" in text and "family 6 model 143" in text
    assert "zen3" == cpu.cpu_record(dict(ZEN4, model="1", flags="avx2"))["core"]
    assert cpu.describe(cpu.cpu_record(dict(ZEN4, flags="avx2"))).count("AVX2") == 1


def test_unknown_cpus_get_a_stable_readable_folder():
    odd = dict(SPR, model="200", **{"model name": "Intel(R) Xeon(R) CPU Max 9480 @ 1.90GHz"})
    assert cpu.cpu_record(odd)["results_folder"] == "intel-xeon-max-9480-f6m200"
    arm = {"CPU implementer": "0x41", "CPU part": "0xd0c", "Features": "fp asimd"}
    rec = cpu.cpu_record(arm)
    assert rec["results_folder"].endswith("0x41-0xd0c") and not any(rec["flags"].values())
    assert "implementer 0x41 part 0xd0c" in cpu.describe(rec)
    assert cpu.cpu_record({})["results_folder"]


def test_caches_read_sysfs_sizes(tmp_path):
    for i, (level, kind, size, shared) in enumerate([(1, "Data", "48K", "0"), (1, "Instruction", "32K", "0"),
                                                     (2, "Unified", "2048K", "0"), (3, "Unified", "105M", "0-55")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (d / name).write_text(f"{text}\n")
    c = cpu.caches(str(tmp_path))
    assert (c["L1d"], c["L1i"], c["L2"], c["L3"]) == (48 << 10, 32 << 10, 2 << 20, 105 << 20)
    assert c["L3_shared_by"] == 56 and c["L2_shared_by"] == 1


def test_machine_info_records_this_cpu_and_out_expands_cpu(tmp_path):
    m = timing.machine_info()
    rec = m["cpu_record"]
    json.dumps(m)
    assert m["results_folder"] == rec["results_folder"] and rec["model_name"] == m["cpu"]
    assert timing.machine_text(m).startswith(m["cpu"]) and timing.machine_text({"cpu": "x"}) == "x"
    if os.path.isdir(cpu.CACHE_DIR):
        assert rec["caches"].get("L1d", 0) > 0 and timing.l3_bytes() == rec["caches"].get("L3", 32 << 20)
    assert out_folder(f"{tmp_path}/{{cpu}}") == tmp_path / rec["results_folder"]
    assert out_folder(str(tmp_path)) == tmp_path


def test_bandwidth_probe_reads_three_ways_and_keeps_the_fastest():
    from nncomp.bench import roofline
    lim = roofline.machine_limits(quick=True, repeat=1)
    p = lim["bandwidth_probe"]
    rates = [p["numba_sum_GBps"], p["numpy_sgemv_GBps"], p["numpy_sum_threads_GBps"]]
    assert min(rates) > 0 and lim["bandwidth_GBps"] == max(rates) and p["threads"] >= 1
