"""llama-cpp-python's OpenAI-compatible server, with llama.cpp's weight repacking switchable.

On the 2-vCPU AVX-512 Xeon these scripts were last run on, llama.cpp crashes (SIGSEGV) while
loading with its CPU weight repacking ("extra buffer types") on; docs/performance.md has the
details. The server exposes no flag for it, so this wrapper sets `use_extra_bufts` in the
default model parameters before starting the server. Usage: the server's own flags, plus
`--repack` to leave repacking on (llama.cpp's default).

    .venv-ref/bin/python scripts/reference/llamacpp_server.py --model models/X.gguf --port 8391
"""

import runpy
import sys

import llama_cpp.llama_cpp as ll

if "--repack" in sys.argv:
    sys.argv.remove("--repack")
else:
    _default = ll.llama_model_default_params

    def _no_repack():
        params = _default()
        params.use_extra_bufts = False
        return params

    ll.llama_model_default_params = _no_repack

sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
