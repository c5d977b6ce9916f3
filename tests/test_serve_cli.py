"""pipelines/serve/cli.py: user mistakes are one line and exit status 2, before anything loads or listens."""

import pytest

from pipelines.serve.cli import ServeConfig, is_loopback, main


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "/nonexistent/pipe"], "not a pipeline folder"),
        ([], "--model is required"),
        (["--model", "m", "--host", "0.0.0.0"], "--api-token"),
        (["--model", "m", "--max-steps", "0"], "--max-steps must be at least 1"),
        (["--model", "m", "--port", "70000"], "--port"),
    ],
)
def test_mistakes_exit_2_with_one_line(argv, words, capsys):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and words in error and "\n" not in error


def test_only_loopback_may_go_without_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert ServeConfig(model="m", host="0.0.0.0", api_token="t").api_token == "t"
    assert ServeConfig(model="m", host="0.0.0.0", insecure=True).insecure
