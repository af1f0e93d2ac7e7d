"""Sampling: percentages hold over many draws, keys are all-or-none, the rate cap refills."""

from __future__ import annotations

import random

import pytest

from shadowtap.proxy.sampling import SampleKey, TokenBucket, in_sample, key_in_sample
from shadowtap.recorder.errors import ConfigError


@pytest.mark.parametrize("percent", [1.0, 10.0, 25.0, 50.0, 90.0])
def test_key_sampling_is_close_to_percent(percent: float) -> None:
    keys = [f"user-{i}".encode() for i in range(20_000)]
    share = sum(key_in_sample(k, percent) for k in keys) / len(keys) * 100
    assert abs(share - percent) < max(1.0, percent * 0.1)


def test_key_sampling_is_stable_and_monotonic_in_percent() -> None:
    keys = [f"k{i}".encode() for i in range(2_000)]
    at_10 = {k for k in keys if key_in_sample(k, 10.0)}
    assert at_10 == {k for k in keys if key_in_sample(k, 10.0)}
    # Raising the percent only adds keys: a user never flips out of the sample.
    assert at_10 <= {k for k in keys if key_in_sample(k, 30.0)}
    assert not any(key_in_sample(k, 0.0) for k in keys)
    assert all(key_in_sample(k, 100.0) for k in keys)


def test_coin_flip_percent() -> None:
    rng = random.Random(7)
    share = sum(in_sample(20.0, rng.random) for _ in range(20_000)) / 200
    assert 18.5 < share < 21.5
    assert in_sample(100.0) and not in_sample(0.0)


def test_sample_key_sources() -> None:
    headers = ((b"X-User", b"alice"), (b"Cookie", b"a=1; sid=xyz"))
    assert SampleKey.parse("header:x-user", field="k").extract("/", headers) == b"alice"
    assert SampleKey.parse("cookie:sid", field="k").extract("/", headers) == b"xyz"
    assert SampleKey.parse("query:uid", field="k").extract("/p?a=1&uid=42", headers) == b"42"
    assert SampleKey.parse("query:uid", field="k").extract("/p", headers) is None
    assert SampleKey.parse("cookie:none", field="k").extract("/", headers) is None
    assert SampleKey.parse("header:X-Missing", field="k").extract("/", headers) is None


@pytest.mark.parametrize("spec", ["nosep", "body:x", "header:"])
def test_bad_sample_key_names_field(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        SampleKey.parse(spec, field="mirror.sample_key")
    assert info.value.field == "mirror.sample_key"


def test_token_bucket_caps_and_refills() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5.0, now_s=0.0)
    assert sum(bucket.try_take(0.0) for _ in range(20)) == 5
    assert not bucket.try_take(0.05)
    assert bucket.try_take(0.1)
    # Idle time saves up at most `burst` tokens.
    assert sum(bucket.try_take(100.0) for _ in range(20)) == 5
    with pytest.raises(ConfigError):
        TokenBucket(rate_per_s=0, burst=1, now_s=0)
