"""SamplingParams: defaults, normalisation, and one clear error per bad field."""

from __future__ import annotations

import math

import pytest

from kilotok.errors import InvalidRequestError, KilotokError
from kilotok.sampling_params import SamplingParams


def test_defaults_match_the_documented_api() -> None:
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    assert (params.seed, params.max_tokens, params.stop, params.stop_token_ids) == (None, 256, None, None)
    assert params.ignore_eos is False and params.include_stop_str_in_output is False
    assert params.greedy is False


@pytest.mark.parametrize(("temperature", "greedy"), [(0, True), (0.0, True), (1e-9, False), (0.7, False)])
def test_greedy_means_temperature_zero(temperature: float, greedy: bool) -> None:
    assert SamplingParams(temperature=temperature).greedy is greedy


def test_one_stop_string_becomes_a_list() -> None:
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
    assert SamplingParams(stop=("a", "bc")).stop == ["a", "bc"]
    assert SamplingParams(stop_token_ids=(2, 7)).stop_token_ids == [2, 7]


def test_stop_list_is_copied_so_later_edits_by_the_caller_do_not_leak_in() -> None:
    stop = ["END"]
    params = SamplingParams(stop=stop)
    stop.append("")
    assert params.stop == ["END"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0, "top_p": 1, "top_k": -1, "min_p": 0, "max_tokens": 1},
        {"top_p": 1e-6, "top_k": 50, "min_p": 1.0, "seed": 0},
        {"seed": -(2**63)},
        {"seed": 2**64 - 1},
        {"stop": [], "stop_token_ids": []},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict) -> None:
    SamplingParams(**kwargs)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("temperature", -0.1, ">= 0"),
        ("temperature", math.inf, "finite"),
        ("temperature", math.nan, "finite"),
        ("temperature", "1", "number"),
        ("top_p", 0.0, "0 < top_p <= 1"),
        ("top_p", 1.5, "0 < top_p <= 1"),
        ("top_p", math.nan, "0 < top_p <= 1"),
        ("top_k", -2, ">= -1"),
        ("top_k", 2.5, "integer"),
        ("top_k", True, "integer"),
        ("min_p", -0.01, "0 <= min_p <= 1"),
        ("min_p", 1.01, "0 <= min_p <= 1"),
        ("max_tokens", 0, ">= 1"),
        ("max_tokens", 3.0, "integer"),
        ("seed", 1.5, "integer"),
        ("seed", 2**64, "integer in"),
        ("stop", "", "non-empty"),
        ("stop", ["ok", ""], "non-empty"),
        ("stop", [3], "non-empty"),
        ("stop_token_ids", [-1], ">= 0"),
        ("stop_token_ids", 5, "list"),
        ("ignore_eos", "yes", "true or false"),
        ("include_stop_str_in_output", 1, "true or false"),
    ],
)
def test_bad_value_names_field_value_and_allowed_range(field: str, value: object, allowed: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        SamplingParams(**{field: value})
    message = str(raised.value)
    assert f"{field}={value!r}" in message
    assert allowed in message
    assert isinstance(raised.value, KilotokError)
