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


class Planted:
    """A pickle that creates ``path`` when loaded: what a crafted cache entry would do with worse code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_generation_cache_entry_is_dropped_never_loaded(tmp_path: Path):
    import diskcache

    marker = tmp_path / "ran"
    folder = tmp_path / "generations"
    planter = diskcache.Cache(str(folder))  # diskcache's default: pickles
    planter.set("planted", Planted(marker))
    planter.set("old-style", GEN.to_dict())
    planter.close()
    cache = GenerationCache(folder)
    with pytest.warns(UserWarning, match="dropped"):
        assert cache.get("planted") is None
    with pytest.warns(UserWarning, match="dropped"):
        assert cache.get("old-style") is None  # a pickled dict is refused too: only JSON text is read
    assert not marker.exists() and "planted" not in cache._store
    cache.put_many([("mine", GEN)])
    assert cache.get("mine") == GEN
    cache.close()


def test_dspy_response_cache_refuses_pickled_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import dspy
    from diskcache import FanoutCache

    from medjp_agent.lm.cache import configure_dspy_cache

    marker, folder = tmp_path / "ran", tmp_path / "dspy"
    request = {"model": "openai/m", "messages": [{"role": "user", "content": "x"}]}
    planter = FanoutCache(str(folder), shards=16)
    planter.set(dspy.cache.cache_key(request), Planted(marker))
    planter.close()
    previous = dspy.cache
    try:
        assert configure_dspy_cache(folder) == folder
        assert dspy.cache.get(request) is None and not marker.exists()
    finally:
        dspy.cache = previous


def test_cache_folders_other_users_may_write_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os
    import stat

    from medjp_agent.lm.cache import UnsafeCacheDir, configure_dspy_cache, private_dir

    fresh = private_dir(tmp_path / "new" / "generations")
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o077 == 0  # created private, whatever the umask
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode in (0o777, 0o775):
        os.chmod(shared, mode)
        with pytest.raises(UnsafeCacheDir, match="writable by other users"):
            GenerationCache(shared)
        monkeypatch.setenv("DSPY_CACHEDIR", str(shared))
        with pytest.raises(UnsafeCacheDir, match="chmod go-w"):
            configure_dspy_cache()
    os.chmod(shared, 0o755)
    GenerationCache(shared).close()


@pytest.mark.slow
def test_cache_key_model_part_follows_quantization_dtype_and_versions(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    from medjp_agent.lm import fingerprint as fp
    from medjp_agent.lm.loading import load
    from medjp_agent.lm.options import LMOptions

    from medjp_agent.lm.hf import HFLM

    loads = [load(LMOptions(model=str(tiny_model), **o)) for o in (
        {"dtype": "float32"}, {"dtype": "bfloat16"}, {"load_in_4bit": True}, {"load_in_4bit": True, "dtype": "float32"})]
    fp32 = loads[0].model
    prints = [fp.numerics_fingerprint(loaded.model) for loaded in loads]
    assert len(set(prints)) == 4
    # The HF backend's cache keys carry it: a 4-bit run never reads a full-precision run's generations.
    lms = [HFLM(loaded, cache=None) for loaded in loads]
    assert len({lm.fingerprint for lm in lms}) == 4
    for lm in lms:
        lm.close()
    assert fp.numerics_fingerprint(load(LMOptions(model=str(tiny_model), dtype="float32")).model) == prints[0]
    monkeypatch.setattr(fp, "_version", lambda name: "9.9" if name == "torch" else "1.0")
    assert fp.numerics_fingerprint(fp32) != prints[0]


def test_an_api_backend_reads_dspy_cache_with_restricted_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import dspy
    from diskcache import FanoutCache

    from medjp_agent.lm import build_lm
    from medjp_agent.lm.options import LMOptions

    marker, folder = tmp_path / "ran", tmp_path / "dspy"
    request = {"model": "openai/m", "prompt": "x"}
    planter = FanoutCache(str(folder), shards=16)
    planter.set(dspy.cache.cache_key(request), Planted(marker))
    planter.close()
    monkeypatch.setenv("DSPY_CACHEDIR", str(folder))
    previous = dspy.cache
    try:
        dspy.configure_cache(disk_cache_dir=str(folder))  # what DSPy builds by default: it unpickles anything
        build_lm(LMOptions(model="m", api_base="http://127.0.0.1:9/v1"))
        assert dspy.cache.get(request) is None and not marker.exists()
    finally:
        dspy.cache = previous
