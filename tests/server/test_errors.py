"""Errors come back in OpenAI's shape with the status codes the openai client maps to its exception types,
and nothing a client sends takes the server down."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from tests.server.harness import API_KEY, MODEL

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Hi"}]


def raw_post(served, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{served.root_url}{path}", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_openai_error_shape(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("settings, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 0}, "n"),
])
def test_bad_sampling_parameters_are_400(client, settings, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, **settings)
    error = assert_openai_error_shape(caught.value.response.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_engine_side_parameter_checks_are_400(client):
    with pytest.raises(openai.BadRequestError, match="top_k"):
        client.completions.create(model=MODEL, prompt="Hi", extra_body={"top_k": -5})


def test_unsupported_features_are_400_and_say_so(client):
    with pytest.raises(openai.BadRequestError, match="'logprobs': not supported"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True)
    with pytest.raises(openai.BadRequestError, match="'logprobs': not supported"):
        client.completions.create(model=MODEL, prompt="Hi", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="'presence_penalty': not supported"):
        client.completions.create(model=MODEL, prompt="Hi", presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="'tools': not supported"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {}}}])


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": "2"}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content.0.text"),
    ("/v1/completions", {"prompt": [1, True]}, "prompt.1"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {"prompt": "Hi", "n": True}, "n"),
    ("/v1/completions", {"prompt": "Hi", "temperature": "0.5"}, "temperature"),
])
def test_what_the_schema_forbids_is_400_naming_the_field(served, path, body, param):
    status, answer = raw_post(served, path, json.dumps(body).encode())
    assert status == 400
    assert assert_openai_error_shape(answer)["param"] == param


def test_a_method_the_route_does_not_take_is_405_with_allow(served):
    request = urllib.request.Request(f"{served.root_url}/v1/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 405
    assert caught.value.headers["Allow"] == "POST"
    assert_openai_error_shape(json.loads(caught.value.read()))


def test_wrong_or_missing_api_key_is_401(served):
    with pytest.raises(openai.AuthenticationError) as caught:
        served.client(api_key="wrong").models.list()
    assert assert_openai_error_shape(caught.value.response.json())["code"] == "invalid_api_key"
    status, body = raw_post(served, "/v1/completions", b'{"prompt": "Hi"}', headers={"Authorization": ""})
    assert status == 401
    assert_openai_error_shape(body)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert assert_openai_error_shape(caught.value.response.json())["code"] == "model_not_found"


def test_prompt_over_the_context_window_is_400(client, served):
    too_long = [1] * (served.engine.max_model_len + 10)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=too_long, max_tokens=1)
    assert caught.value.response.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=served.engine.max_model_len)
    assert caught.value.response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("body", [b'{"model": "smollm2-135m", "prompt": ', b"[1, 2, 3]", b"", b"\xff\xfe",
                                  b'{"model": "smollm2-135m", "prompt": {"not": "a prompt"}}'])
def test_malformed_bodies_are_400_and_the_server_keeps_serving(served, client, body):
    status, answer = raw_post(served, "/v1/completions", body)
    assert status == 400
    assert assert_openai_error_shape(answer)["type"] == "invalid_request_error"
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=1).choices[0].finish_reason


def test_unknown_route_is_404_in_the_same_shape(served):
    status, body = raw_post(served, "/v1/nothing-here", b"{}")
    assert status == 404
    assert_openai_error_shape(body)


def test_health_and_raw_stream_framing(served):
    with urllib.request.urlopen(f"{served.root_url}/health", timeout=30) as response:
        assert response.status == 200
    request = urllib.request.Request(
        f"{served.root_url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][len("data: "):])["object"] == "chat.completion.chunk"
