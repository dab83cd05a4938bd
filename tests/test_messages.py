from __future__ import annotations

import orjson
import pytest

from bridge.messages import (
    ErrorResponse,
    Notification,
    ProtocolError,
    Response,
    RpcError,
    ServerRequest,
    decode_message,
    encode_error_response,
    encode_notification,
    encode_request,
    encode_response,
)


def test_response() -> None:
    assert decode_message(b'{"id":1,"result":{"x":1}}') == Response(1, {"x": 1})


def test_response_with_null_result() -> None:
    assert decode_message(b'{"id":"a","result":null}') == Response("a", None)


def test_error_response() -> None:
    message = decode_message(b'{"error":{"code":-32600,"message":"Not initialized"},"id":3}')
    assert message == ErrorResponse(3, RpcError(-32600, "Not initialized"))


def test_notification_keeps_emitted_at() -> None:
    message = decode_message(
        b'{"method":"item/agentMessage/delta","params":{"threadId":"t","delta":"hi"},'
        b'"emittedAtMs":1795271239432}'
    )
    assert message == Notification(
        "item/agentMessage/delta", {"threadId": "t", "delta": "hi"}, 1795271239432
    )


def test_notification_without_params() -> None:
    assert decode_message(b'{"method":"initialized"}') == Notification("initialized", {})


def test_server_request_ids_start_at_zero() -> None:
    message = decode_message(
        b'{"method":"item/commandExecution/requestApproval","id":0,"params":{"threadId":"t"}}'
    )
    assert message == ServerRequest(0, "item/commandExecution/requestApproval", {"threadId": "t"})


def test_jsonrpc_member_is_tolerated() -> None:
    assert decode_message(b'{"jsonrpc":"2.0","id":1,"result":1}') == Response(1, 1)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (b'{"id":99}', "neither 'result' nor 'error'"),
        (b'{"x":1}', "neither 'method' nor 'id'"),
        (b'{"method":5}', "'method' is not a string"),
        (b'{"method":"m","params":[1]}', "'params' is not an object"),
        (b'{"method":"m","id":true,"params":{}}', "bad request id"),
        (b'{"id":1,"error":"boom"}', "'error' is not an object"),
        (b'{"id":1,"result":', "not JSON"),
    ],
)
def test_malformed_lines_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_message(line)


def test_encodings_are_single_lines_without_jsonrpc() -> None:
    lines = [
        encode_request(7, "thread/start", {"cwd": "/tmp/a\nb"}),
        encode_notification("initialized"),
        encode_response(0, {"decision": "decline"}),
        encode_error_response(1, -32603, "no"),
    ]
    for line in lines:
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert "jsonrpc" not in orjson.loads(line)
    assert orjson.loads(lines[0]) == {
        "id": 7,
        "method": "thread/start",
        "params": {"cwd": "/tmp/a\nb"},
    }
    assert orjson.loads(lines[1]) == {"method": "initialized"}
    assert orjson.loads(lines[2]) == {"id": 0, "result": {"decision": "decline"}}
    assert orjson.loads(lines[3]) == {"id": 1, "error": {"code": -32603, "message": "no"}}


def test_encode_then_decode_round_trip() -> None:
    line = encode_request(1, "turn/start", {"threadId": "t"})
    decoded = decode_message(line)
    # our own request, read back, is a server-request-shaped message
    assert decoded == ServerRequest(1, "turn/start", {"threadId": "t"})
