#!/usr/bin/env python3
"""torch CPU randn references for every ATen CPU capability.

    /opt/refenv/bin/python tools/reference/make_randn.py

Writes tests/fixtures/reference/randn.safetensors with keys "<cap>/seed<seed>/<shape>" where
<shape> is the dims joined by "x" (e.g. "avx2/seed42/1x4x32x32"), each
    torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
computed in a subprocess run with ATEN_CPU_CAPABILITY=<cap> (checked with
torch.backends.cpu.get_cpu_capability()). Plus "mt19937/seed42/raw_u32" (first 20 raw outputs of the
generator's mt19937 engine, stored as int64) for seed 42.

To keep the file small, a tensor bit-identical to one already stored for the same seed/shape
under an earlier capability (order default, avx2, avx512) is left out. The file metadata has one
key, "randn_info", a JSON object whose "aliases" maps each left-out key to the stored key to read instead, "differs_from_default"
lists the non-default keys that differ from default, and "cap_groups" the groups of capabilities
that give identical results for every case.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "randn.safetensors")

CAPS = ["default", "avx2", "avx512"]
SEEDS = [0, 1, 42, 123456789, 2**32 + 5, 2**63 - 1]
SHAPES = [(1, 4, 32, 32), (1, 4, 33, 41), (1, 4, 7, 3), (16,), (17,), (5,)]
# large shapes only for a few seeds (file size)
EXTRA = {(2, 4, 32, 48): [0, 42], (1, 4, 128, 128): [42]}


def plan():
    items = [(s, sh) for s in SEEDS for sh in SHAPES]
    for sh, seeds in EXTRA.items():
        items += [(s, sh) for s in seeds]
    return items


def key(cap, seed, shape):
    return f"{cap}/seed{seed}/{'x'.join(map(str, shape))}"


def child(cap, path):
    import torch
    from safetensors.torch import save_file

    got = torch.backends.cpu.get_cpu_capability()
    out = {}
    for seed, shape in plan():
        g = torch.Generator("cpu").manual_seed(seed)
        out[key(cap, seed, shape)] = torch.randn(shape, generator=g, dtype=torch.float32)
    save_file(out, path)
    print(json.dumps({"requested": cap, "actual": got, "torch": torch.__version__}))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])

    import torch
    from safetensors.torch import load_file, save_file

    tmp = tempfile.mkdtemp()
    per_cap = {}
    actual = {}
    for cap in CAPS:
        p = os.path.join(tmp, cap + ".safetensors")
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        r = subprocess.run([sys.executable, __file__, "--child", cap, p], env=env, check=True, capture_output=True, text=True)
        info = json.loads(r.stdout.strip().splitlines()[-1])
        actual[cap] = info["actual"]
        print(f"ATEN_CPU_CAPABILITY={cap}: torch reports {info['actual']}")
        per_cap[cap] = load_file(p)

    out = {}
    aliases = {}  # key left out -> stored key with bit-identical contents
    diff = []
    for seed, shape in plan():
        stored = []
        for cap in CAPS:
            k = key(cap, seed, shape)
            t = per_cap[cap][k]
            twin = next((s for s in stored if torch.equal(out[s], t)), None)
            if twin is not None:
                aliases[k] = twin
            else:
                if cap != "default":
                    d = out[key("default", seed, shape)]
                    diff.append(k)
                    print(f"  {k}: {(t != d).sum().item()}/{t.numel()} elements differ from default, "
                          f"max |d| {(t - d).abs().max().item():.3g}")
                out[k] = t
                stored.append(k)
    # seed 2**32+5 gives the same stream as seed 5 (torch's mt19937 keeps the low 32 bits of the seed)
    g5 = torch.randn(17, generator=torch.Generator("cpu").manual_seed(5))
    mine = torch.backends.cpu.get_cpu_capability().lower()
    assert torch.equal(g5, per_cap[mine][key(mine, 2**32 + 5, (17,))])

    # raw mt19937 outputs: random_(INT64_MIN, None) draws random64() = (u32_a << 32) | u32_b per element
    g = torch.Generator("cpu").manual_seed(42)
    r = torch.empty(10, dtype=torch.int64).random_(-(2**63), None, generator=g)
    raw = []
    for v in r.tolist():
        v &= 0xFFFFFFFFFFFFFFFF
        raw += [v >> 32, v & 0xFFFFFFFF]
    assert raw[0] == 1608637542  # std::mt19937(42)() first output
    out["mt19937/seed42/raw_u32"] = torch.tensor(raw, dtype=torch.int64)

    groups = {}
    for cap in CAPS:
        rep = next((c for c in groups if all(
            torch.equal(per_cap[c][key(c, sd, sh)], per_cap[cap][key(cap, sd, sh)]) for sd, sh in plan())), None)
        groups.setdefault(rep or cap, []).append(cap) if rep else groups.setdefault(cap, [cap])
    print(f"capabilities with bit-identical randn: {list(groups.values())}")
    meta = {
        "description": "torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed), dtype=float32) per "
                       "ATEN_CPU_CAPABILITY; keys identical to an earlier capability's are left out, see aliases",
        "torch_version": torch.__version__,
        "capabilities": json.dumps(actual),
        "aliases": json.dumps(aliases, indent=0),
        "differs_from_default": json.dumps(diff),
        "cap_groups": json.dumps(groups),
        "seeds": json.dumps(SEEDS),
        "note": "seed 2**32+5 == seed 5 (only the low 32 bits of the seed are used to seed mt19937). "
                "mt19937/seed42/raw_u32 = first 20 raw uint32 engine outputs (int64 tensor).",
    }
    # safetensors writes metadata from a hash map (key order varies run to run): keep a single key so
    # that the file is byte-for-byte reproducible.
    info = {k: (json.loads(v) if k in ("aliases", "differs_from_default", "cap_groups", "capabilities", "seeds") else v)
            for k, v in meta.items()}
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, OUT,
              metadata={"randn_info": json.dumps(info, sort_keys=True)})
    os.chmod(OUT, 0o644)
    print(f"{len(out)} tensors -> {OUT} ({os.path.getsize(OUT)} bytes); {len(diff)} differ from default, {len(aliases)} aliased")


if __name__ == "__main__":
    main()
