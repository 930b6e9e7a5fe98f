"""The SASS layer of the cost model on a checked-in listing with counts made by hand (gawk over the text, not
this parser), and on single instructions whose meaning the PTX ISA / CUDA docs fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from spin_kernels.perf import cost_model, sass

# tests/perf/_aot_kernels.py:tiny_sum (BLOCK=128, 1 warp) compiled for sm_90a by Triton 3.8 and dumped with
# cuobjdump -sass. LLVM unrolled its loop 4x: 16 LDG per iteration (4 blocks x 4 elements per thread).
FIXTURE = Path(__file__).parent / "fixtures" / "tiny_sum.sm90a.sass"


@pytest.fixture(scope="module")
def tiny_sum():
    return sass.parse_sass(FIXTURE.read_text())["tiny_sum"]


def test_instructions_up_to_the_last_exit(tiny_sum):
    assert len(tiny_sum.instructions) == 216          # 232 in the listing; 16 after the last EXIT are not run
    assert tiny_sum.instructions[-1].opcode == "EXIT"


def test_the_one_loop_and_its_body(tiny_sum):
    assert [(lp.start, lp.end, lp.parent) for lp in tiny_sum.loops] == [(0x160, 0x770, None)]
    body = [i for i in tiny_sum.instructions if tiny_sum.innermost_loop(i.addr) == 0]
    assert len(body) == 98
    ops = {}
    for i in body:
        ops[i.opcode] = ops.get(i.opcode, 0) + 1
    assert ops == {"BRA": 1, "CS2R": 5, "FADD": 16, "IADD3": 13, "IMAD": 6, "ISETP": 17, "LDG": 16, "MOV": 1,
                   "UIADD3": 4, "UIMAD": 4, "USHF": 4, "VIADD": 11}
    hist = tiny_sum.histogram(0)
    assert hist["ldg"] == 16 and hist["fp32"] == 16 and hist["uniform"] == 12 and hist["control"] == 1
    assert hist["int"] == 6 + 13 + 17 + 11                 # IMAD, IADD3, ISETP, VIADD


def test_counts_multiply_by_the_trip_count(tiny_sum):
    one = cost_model.count(tiny_sum, [1.0])
    ten = cost_model.count(tiny_sum, [10.0])
    assert ten.instructions - one.instructions == pytest.approx(9 * 98)
    assert ten.ldg_bytes - one.ldg_bytes == pytest.approx(9 * 16 * 4 * 32)   # 16 four-byte loads x 32 lanes
    assert ten.by_class["fp32"] == pytest.approx(one.by_class["fp32"] + 9 * 16)


@pytest.mark.parametrize("text,cls,bytes_per_thread,macs,smem", [
    ("LDG.E.128 R4, desc[UR4][R2.64]", "ldg", 16, 0, 0),
    ("LDG.E.U16 R7, desc[UR4][R2.64]", "ldg", 2, 0, 0),
    ("STS.64 [R3], R8", "sts", 8, 0, 8 * 32),
    ("LDSM.16.M88.4 R8, [R12]", "lds", 16, 0, 512),
    ("HMMA.16816.F32.BF16 R4, R8, R12, R4", "tensor_mma", 0, 16 * 8 * 16, 0),
    # wgmma: 4 warps share the m64nNk16 product; B (N x 16) always from shared memory, A too when it is a gdesc
    ("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24, gsb0", "tensor_gmma", 0, 64 * 128 * 16 / 4,
     (128 * 16 + 64 * 16) * 2 / 4),
    ("HGMMA.64x64x16.F32.BF16 R24, R56, gdesc[UR12], R24", "tensor_gmma", 0, 64 * 64 * 16 / 4, 64 * 16 * 2 / 4),
    ("MUFU.EX2 R3, R2", "mufu", 0, 0, 0),
    ("F2FP.BF16.F32.PACK_AB R0, R3, R2", "convert_packed", 0, 0, 0),
    ("UIADD3 UR4, UR4, 0x80, URZ", "uniform", 0, 0, 0),
])
def test_single_instructions(text, cls, bytes_per_thread, macs, smem):
    ins = sass.parse_instruction(0, text)
    assert ins.cls == cls
    assert ins.bytes_per_thread() == bytes_per_thread
    assert ins.macs_per_warp() == macs
    assert ins.smem_bytes_per_warp() == smem


def test_predicates_and_branch_targets():
    ins = sass.parse_instruction(0x6e50, "@!P2 BRA 0xe40")
    assert ins.pred == "@!P2" and ins.opcode == "BRA" and ins.target == 0xe40


def test_nested_loops_and_self_branches():
    text = "\n".join(f"        /*{a:04x}*/ {t} ;  /* 0x0 */" for a, t in [
        (0x00, "MOV R1, R2"), (0x10, "FADD R1, R1, R1"),      # outer loop 0x10..0x50
        (0x20, "FFMA R3, R3, R3, R3"), (0x30, "@P0 BRA 0x20"),  # inner loop 0x20..0x30
        (0x40, "IADD3 R4, R4, 0x1, RZ"), (0x50, "@P1 BRA 0x10"),
        (0x60, "EXIT"), (0x70, "BRA 0x70")])
    fn = sass.parse_function("f", text)
    assert [(lp.start, lp.end, lp.parent, lp.depth) for lp in fn.loops] == [(0x10, 0x50, None, 0),
                                                                             (0x20, 0x30, 0, 1)]
    counts = cost_model.count(fn, [3.0, 5.0])
    # MOV, EXIT once; FADD, IADD3, BRA(outer) 3x; FFMA, BRA(inner) 3*5x
    assert counts.instructions == 2 + 3 * 3 + 2 * 15
