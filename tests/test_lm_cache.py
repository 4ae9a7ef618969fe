"""Generation params, cache keys, the on-disk cache across processes, and model fingerprints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medjp_agent.lm.cache import GenerationCache, cache_key
from medjp_agent.lm.completions import Generation, openai_response
from medjp_agent.lm.fingerprint import fingerprint
from medjp_agent.lm.params import GenerationParams

GEN = Generation(texts=("答え：a",), finish_reasons=("stop",), prompt_tokens=12, completion_tokens=3, generation_s=0.5)


def test_params_normalise_every_spelling_of_one_request():
    greedy = GenerationParams.from_kwargs({"max_tokens": 64, "temperature": 0.0, "top_p": 0.9, "stop": "###",
                                           "rollout_id": 3})
    assert greedy == GenerationParams.from_kwargs({"max_new_tokens": 64, "temperature": None, "stop": ["###"]})
    assert greedy.top_p == 1.0 and not greedy.sampling
    sampled = GenerationParams.from_kwargs({"max_tokens": 64, "temperature": 0.7, "num_generations": 5})
    assert sampled.sampling and sampled.n == 5
    with pytest.raises(ValueError, match="'tools'"):
        GenerationParams.from_kwargs({"tools": []})
    with pytest.raises(ValueError, match="invalid"):
        GenerationParams.from_kwargs({"n": 0})


def test_cache_keys_change_with_every_part_of_the_request():
    params = GenerationParams(max_new_tokens=32)
    base = cache_key("model+base", True, "prompt", params)
    variants = [cache_key("model+lora", True, "prompt", params), cache_key("model+base", False, "prompt", params),
                cache_key("model+base", True, "prompt ", params),
                cache_key("model+base", True, "prompt", GenerationParams(max_new_tokens=33)),
                cache_key("model+base", True, "prompt", GenerationParams(max_new_tokens=32, n=2, temperature=1.0))]
    assert len({base, *variants}) == 6
    # DSPy's rollout_id asks for another sample: it matters when sampling, not for greedy decoding.
    assert cache_key("model+base", True, "prompt", params, rollout_id=1) == base
    sampling = GenerationParams(temperature=0.8)
    assert cache_key("m", True, "p", sampling, 1) != cache_key("m", True, "p", sampling, 2)


def test_entries_written_by_another_process_are_read_here(tmp_path: Path):
    code = ("import sys; from medjp_agent.lm.cache import GenerationCache; "
            "from medjp_agent.lm.completions import Generation; "
            "GenerationCache(sys.argv[1]).put_many([('k', Generation(('他のプロセス',), ('stop',), 1, 2, 0.1))])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    cache = GenerationCache(tmp_path)
    assert cache.get("k").texts == ("他のプロセス",)
    cache.put_many([("mine", GEN)])
    assert cache.get("mine") == GEN and cache.get("missing") is None
    cache.close()


def test_openai_response_shapes():
    chat = openai_response(GEN, "m")
    assert chat["choices"][0]["message"]["content"] == "答え：a"
    assert chat["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "generation_s": 0.5}
    assert openai_response(GEN, "m", "text")["choices"][0]["text"] == "答え：a"


def test_fingerprints_follow_content_not_place_or_time(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 256}')
    weights = bytearray(3 << 20)
    (model / "model.safetensors").write_bytes(weights)
    first = fingerprint(model)

    copy = tmp_path / "elsewhere"
    shutil.copytree(model, copy)  # another place, other modification times
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("x")
    assert fingerprint(copy) == first

    weights[-1] = 1  # a change in the last MiB of a large file
    (copy / "model.safetensors").write_bytes(weights)
    assert fingerprint(copy) != first
    assert fingerprint("org/not-downloaded") == "org/not-downloaded@unresolved"
