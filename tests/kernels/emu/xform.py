#!/usr/bin/env python3
"""Rewrite a kernels/<op>.cu for the CPU emulator (cuda_emu.h):

    name<<<grid, block, smem, stream>>>(args)  ->  emu_launch(name, grid, block, smem, stream)(args)
    extern __shared__ T name[];                ->  T *name = (T *)emu_dynamic_smem;

Everything else compiles as C++ against cuda_emu.h.  usage: xform.py IN.cu OUT.cpp"""
import re
import sys

src = open(sys.argv[1], encoding="utf-8").read()
src = re.sub(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;",
             r"\1 *\2 = (\1 *)emu_dynamic_smem;", src)
src = re.sub(r"([A-Za-z_][\w.]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>",
             lambda m: "emu_launch(%s, %s)" % (m.group(1), m.group(2)), src, flags=re.S)
with open(sys.argv[2], "w", encoding="utf-8") as out:
    out.write('#line 1 "%s"\n' % sys.argv[1])
    out.write(src)
