"""``python -m llama_cpp.server``, with the model loaded as grpod's adapter loads it: without
llama.cpp's extra buffer types (see ``grpod.workers.llm.without_extra_buffer_types``)."""

from __future__ import annotations

import runpy

from grpod.workers.llm import without_extra_buffer_types

if __name__ == "__main__":
    with without_extra_buffer_types():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
