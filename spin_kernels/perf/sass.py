"""Read sm_90 machine code (``cuobjdump -sass``): instructions, their classes and widths, and the loops.

This is the text layer of the cost model (:mod:`spin_kernels.perf.cost_model`): it knows nothing of shapes or
launches. For one function it gives

* every instruction with its address, predicate, opcode and modifiers (``HGMMA.64x64x16.F32.BF16`` has opcode
  ``HGMMA`` and modifiers ``64x64x16``, ``F32``, ``BF16``), its :data:`class <CLASSES>` and, where it has one,
  the bytes it moves per thread or the multiply-adds it does per warp;
* the loops: a backward branch (a ``BRA`` to a lower address, not to itself) closes a loop from its target to the
  branch; loops nest by containment. A loop's body is counted once per trip, its enclosing loops multiply in.

Counting conventions (per warp, the unit the schedulers issue): ``HGMMA`` is executed by the four warps of a
warpgroup, so each warp's instruction carries a quarter of the ``m·n·k`` multiply-adds and of the shared-memory
operand bytes; ``HMMA.16816`` carries 16·8·16 per warp. Code after the function's last ``EXIT`` (the
``BRA`` to itself and the padding ``NOP`` s) is not executed and is dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Instruction classes, and which opcodes belong to each. Anything not listed is "other" (it still takes an issue
# slot). Integer multiply-adds (IMAD) are listed with the integer ALU: the CUDA Programming Guide gives 32-bit
# integer add / multiply-add the same 64 results per clock per SM on compute capability 9.0.
_CLASS_OF_OPCODE = {
    **dict.fromkeys(("HGMMA", "QGMMA", "IGMMA", "BGMMA"), "tensor_gmma"),
    **dict.fromkeys(("HMMA", "IMMA", "DMMA"), "tensor_mma"),
    **dict.fromkeys(("FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FSWZADD", "HFMA2",
                     "HADD2", "HMUL2", "HMNMX2", "HSETP2", "HSET2"), "fp32"),
    **dict.fromkeys(("IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "IMNMX", "SEL",
                     "PRMT", "IABS", "ICMP", "IDP", "IMUL", "BMSK", "BREV", "SGXT", "VIMNMX", "VIADD", "IADD32I",
                     "PLOP3", "P2R", "R2P", "FLO", "POPC"), "int"),
    "MUFU": "mufu",
    **dict.fromkeys(("F2F", "F2I", "I2F", "I2FP", "F2IP", "FRND"), "convert"),
    "F2FP": "convert_packed",
    **dict.fromkeys(("SHFL", "VOTE", "MATCH", "REDUX"), "warp"),
    **dict.fromkeys(("LDG", "LD"), "ldg"),
    **dict.fromkeys(("STG", "ST"), "stg"),
    "LDGSTS": "ldgsts",
    **dict.fromkeys(("LDS", "LDSM"), "lds"),
    **dict.fromkeys(("STS", "STSM"), "sts"),
    **dict.fromkeys(("LDL", "STL"), "local"),
    **dict.fromkeys(("ATOM", "ATOMG", "RED", "ATOMS"), "atomic"),
    **dict.fromkeys(("UTMALDG", "UTMASTG", "UBLKCP", "UTMAPF", "UBLKPF"), "tma"),
    **dict.fromkeys(("BAR", "SYNCS", "MEMBAR", "WARPGROUP", "DEPBAR", "ERRBAR", "CCTL", "FENCE"), "sync"),
    **dict.fromkeys(("BRA", "BRX", "JMP", "JMX", "EXIT", "RET", "CALL", "BSSY", "BSYNC", "BREAK", "KILL", "NOP",
                     "YIELD", "WARPSYNC"), "control"),
}
CLASSES = ("tensor_gmma", "tensor_mma", "fp32", "int", "mufu", "convert", "convert_packed", "warp", "ldg", "stg",
           "ldgsts", "lds", "sts", "local", "atomic", "tma", "sync", "control", "uniform", "other")
"""Every class an instruction can have. ``uniform``: the U* instructions of the uniform datapath."""

_LINE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;\s*(?:/\*.*)?$")
_PRED = re.compile(r"^(@!?U?P[T0-9]+)\s+")
_WIDTH_BITS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "32": 32, "64": 64, "128": 128}
_ELEM_BYTES = {"BF16": 2, "F16": 2, "E4M3": 1, "E5M2": 1, "TF32": 4, "S8": 1, "U8": 1}


@dataclass
class Instruction:
    """One SASS instruction of a function."""

    addr: int
    text: str                       # the instruction as printed, without the predicate
    pred: str = ""                  # e.g. "@!P2", "" when unpredicated
    opcode: str = ""
    modifiers: tuple = ()
    operands: str = ""
    cls: str = "other"

    @property
    def target(self) -> int | None:
        """The absolute target address of a branch, or None."""
        if self.opcode not in ("BRA", "BRX", "JMP"):
            return None
        m = re.search(r"0x([0-9a-f]+)", self.operands)
        return int(m.group(1), 16) if m else None

    def bytes_per_thread(self) -> int:
        """Bytes each thread moves with a load / store (width modifier; 4 without one); 0 for other classes."""
        if self.cls not in ("ldg", "stg", "ldgsts", "lds", "sts", "local", "atomic"):
            return 0
        if self.opcode in ("LDSM", "STSM"):
            return self.matrix_bytes_per_warp() // 32
        for mod in reversed(self.modifiers):
            if mod in _WIDTH_BITS:
                return _WIDTH_BITS[mod] // 8
        return 4

    def matrix_bytes_per_warp(self) -> int:
        """``LDSM`` / ``STSM``: 8×8 matrices of 16-bit values (128 bytes each), 1, 2 or 4 of them per warp
        (printed ``LDSM.16.M88.4``; ``.MT88`` is the transposing form)."""
        count = next((int(m) for m in reversed(self.modifiers) if m in ("1", "2", "4")), 1)
        return 128 * count

    def gmma_shape(self) -> tuple[int, int, int] | None:
        """(m, n, k) of an ``HGMMA``-family instruction."""
        for mod in self.modifiers:
            m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", mod)
            if m:
                return int(m.group(1)), int(m.group(2)), int(m.group(3))
        return None

    def macs_per_warp(self) -> float:
        """Multiply-adds this warp's instruction contributes (a warpgroup's ``HGMMA`` is shared by its 4 warps)."""
        if self.cls == "tensor_gmma":
            m, n, k = self.gmma_shape() or (0, 0, 0)
            return m * n * k / 4
        if self.cls == "tensor_mma":
            for mod in self.modifiers:  # HMMA.16816: m16 n8 k16; HMMA.1688: m16 n8 k8
                if mod.isdigit() and len(mod) in (4, 5):
                    return 16 * 8 * int(mod[3:])
            return 16 * 8 * 16
        return 0.0

    def smem_operand_bytes_per_warp(self) -> float:
        """Shared-memory bytes an ``HGMMA`` reads for its operands, per warp: B always (n×k), A (m×k) when it is a
        shared-memory descriptor rather than registers."""
        if self.cls != "tensor_gmma":
            return 0.0
        m, n, k = self.gmma_shape() or (0, 0, 0)
        elem = next((_ELEM_BYTES[mod] for mod in self.modifiers[1:] if mod in _ELEM_BYTES), 2)
        ops = [o.strip() for o in self.operands.split(",")]
        a_from_smem = len(ops) > 1 and ops[1].startswith("gdesc")
        return (n * k + (m * k if a_from_smem else 0)) * elem / 4

    def smem_bytes_per_warp(self) -> float:
        """Bytes through the shared-memory pipe per warp: loads / stores (32 lanes × width) and HGMMA operands."""
        if self.cls in ("lds", "sts"):
            return self.bytes_per_thread() * 32
        if self.cls == "ldgsts":  # cp.async writes what it loads into shared memory
            return self.bytes_per_thread() * 32
        return self.smem_operand_bytes_per_warp()


@dataclass
class Loop:
    """Instructions from ``start`` to ``end`` (the closing backward branch), inclusive; ``parent`` the index of the
    innermost enclosing loop in :attr:`Function.loops` or None."""

    start: int
    end: int
    parent: int | None = None
    depth: int = 0

    def contains(self, addr: int) -> bool:
        """Whether the instruction at ``addr`` is in this loop's body."""
        return self.start <= addr <= self.end


@dataclass
class Function:
    """One function's instructions and loops (loops ordered by start address)."""

    name: str
    instructions: list = field(default_factory=list)
    loops: list = field(default_factory=list)

    def innermost_loop(self, addr: int) -> int | None:
        """Index of the innermost loop containing ``addr``, or None (straight-line code)."""
        best = None
        for i, lp in enumerate(self.loops):
            if lp.contains(addr) and (best is None or lp.depth > self.loops[best].depth):
                best = i
        return best

    def loop_chain(self, addr: int) -> list[int]:
        """Indices of the loops around ``addr``, innermost first."""
        chain, i = [], self.innermost_loop(addr)
        while i is not None:
            chain.append(i)
            i = self.loops[i].parent
        return chain

    def histogram(self, loop: int | None = None) -> dict:
        """Instruction count per class in ``loop``'s own body (its nested loops excluded), or in the straight-line
        code with ``loop=None``."""
        out: dict = {}
        for ins in self.instructions:
            if self.innermost_loop(ins.addr) == loop:
                out[ins.cls] = out.get(ins.cls, 0) + 1
        return out


def classify(opcode: str) -> str:
    """The class (:data:`CLASSES`) of an opcode."""
    if opcode in _CLASS_OF_OPCODE:
        return _CLASS_OF_OPCODE[opcode]
    if (opcode.startswith("U") and opcode[1:] in _CLASS_OF_OPCODE) or opcode in ("ULDC", "UMOV", "S2UR", "R2UR"):
        return "uniform"
    return "other"


def parse_instruction(addr: int, text: str) -> Instruction:
    """One instruction from its address and printed text (``@!P0 LDG.E.128 R4, desc[UR4][R2.64]``)."""
    pred = ""
    m = _PRED.match(text)
    if m:
        pred, text = m.group(1), text[m.end():]
    head, _, operands = text.partition(" ")
    parts = head.split(".")
    ins = Instruction(addr=addr, text=text, pred=pred, opcode=parts[0], modifiers=tuple(parts[1:]),
                      operands=operands.strip())
    ins.cls = classify(ins.opcode)
    return ins


def _loops(instrs: list[Instruction]) -> list[Loop]:
    ends: dict[int, int] = {}
    for ins in instrs:
        t = ins.target
        if t is not None and t < ins.addr:
            ends[t] = max(ends.get(t, t), ins.addr)   # several latches of one loop: the last closes it
    loops = sorted((Loop(start, end) for start, end in ends.items()), key=lambda lp: (lp.start, -lp.end))
    for i, lp in enumerate(loops):
        enclosing = [j for j, o in enumerate(loops) if j != i and o.start <= lp.start and lp.end <= o.end
                     and (o.end - o.start) > (lp.end - lp.start)]
        if enclosing:
            lp.parent = max(enclosing, key=lambda j: loops[j].start)
    for lp in loops:
        d, p = 0, lp.parent
        while p is not None:
            d, p = d + 1, loops[p].parent
        lp.depth = d
    return loops


def parse_function(name: str, text: str) -> Function:
    """A :class:`Function` from the SASS lines of one function (everything after ``Function : name``)."""
    instrs = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            instrs.append(parse_instruction(int(m.group(1), 16), m.group(2)))
    # Drop what follows the last EXIT: the branch-to-self that parks finished warps, the alignment padding and
    # out-of-line subroutines. One exception: a loop whose exit test is a predicated EXIT (a persistent tile loop)
    # closes with the backward branch right after it; that latch stays, or the loop would vanish.
    last_exit = max((i for i, ins in enumerate(instrs) if ins.opcode == "EXIT"), default=len(instrs) - 1)
    after = instrs[last_exit + 1] if last_exit + 1 < len(instrs) else None
    latch = after is not None and after.opcode == "BRA" and after.target is not None and after.target < after.addr
    instrs = instrs[:last_exit + 1 + latch]
    return Function(name=name, instructions=instrs, loops=_loops(instrs))


def parse_sass(text: str) -> dict[str, Function]:
    """Every function in a ``cuobjdump -sass`` listing, by (mangled) name."""
    out = {}
    pieces = re.split(r"^\s*Function : (\S+)\s*$", text, flags=re.M)
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        out[name] = parse_function(name, body)
    return out
