"""benchmarks/wrk_load.py without a server: wrk's result line, the body file and command, wrk missing."""

from __future__ import annotations

import math

import pytest

from benchmarks import wrk_load
from benchmarks.wrk_load import WrkError, choose_clients, parse_result, write_bodies, wrk_command

WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:8000/v1/predict
  1 threads and 32 connections
  Latency Distribution
     50%    9.10ms
  24000 requests in 8.00s, 9.20MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   3000.00
WRK_RESULT requests=24000 seconds=8.000000 rps=3000.000 p50_ms=9.1000 p99_ms=31.2500 non_2xx=12 socket_errors=3 \
next_body=4321
"""  # the backslash joins the line: wrk prints it as one


def test_parse_result_reads_the_line_and_counts_non_2xx_as_errors():
    result = parse_result(WRK_OUTPUT, concurrency=32)
    assert (result.concurrency, result.requests, result.non_2xx, result.socket_errors) == (32, 24000, 12, 3)
    assert (result.p50_ms, result.p99_ms, result.rps, result.next_body) == (9.1, 31.25, 3000.0, 4321)
    assert result.errors == 15
    assert math.isclose(result.throughput, (24000 - 12) / 8.0)  # 2xx answers only, like LoadResult


def test_parse_result_refuses_output_without_a_complete_line():
    with pytest.raises(WrkError, match="no WRK_RESULT line"):
        parse_result("Requests/sec: 3000.00\n", concurrency=1)
    with pytest.raises(WrkError, match="lacks non_2xx"):
        parse_result("WRK_RESULT requests=1 seconds=1 rps=1 p50_ms=1 p99_ms=1 socket_errors=0 next_body=1\n", 1)


def test_write_bodies_keeps_their_order_one_a_line(tmp_path):
    bodies = [b'{"bars":[[1,2,3,4,5]],"position":%d}' % i for i in (3, 1, 2)]
    path = write_bodies(bodies, tmp_path)
    assert path.read_bytes().splitlines() == bodies
    with pytest.raises(ValueError, match="newline"):
        write_bodies([b'{"a":\n1}'], tmp_path)


def test_wrk_command_runs_the_committed_script_from_the_given_body(tmp_path, monkeypatch):
    monkeypatch.setattr(wrk_load.shutil, "which", lambda name: "/usr/bin/wrk")
    command = wrk_command("http://127.0.0.1:9/v1/predict", tmp_path / "bodies.jsonl", 17, 32, 7.6)
    assert command[:4] == ["/usr/bin/wrk", "-t1", "-c32", "-d8s"]
    assert "--latency" in command
    script = command[command.index("-s") + 1]
    assert script == str(wrk_load.SCRIPT) and wrk_load.SCRIPT.is_file()
    assert command[-4:] == ["http://127.0.0.1:9/v1/predict", "--", str(tmp_path / "bodies.jsonl"), "17"]
    lua = wrk_load.SCRIPT.read_text()
    assert '["Content-Type"] = "application/json"' in lua and "WRK_RESULT" in lua and "non_2xx=" in lua


def test_wrk_missing_measures_with_the_asyncio_client_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(wrk_load.shutil, "which", lambda name: None)
    assert choose_clients(None) == ["python"]
    assert choose_clients("both") == ["python"]
    assert choose_clients("python") == ["python"]
    out = capsys.readouterr().out
    assert out.count("apt-get install wrk") == 2 and "asyncio client only" in out  # once per call that wanted wrk
    with pytest.raises(SystemExit, match="apt-get install wrk"):
        choose_clients("wrk")


def test_clients_with_wrk_on_path(monkeypatch):
    monkeypatch.setattr(wrk_load.shutil, "which", lambda name: "/usr/bin/wrk")
    assert choose_clients(None) == ["python", "wrk"]
    assert choose_clients("wrk") == ["wrk"]
    assert choose_clients("python") == ["python"]


def run_lua(chunk: str) -> str:
    """`chunk` (returning a string) in a fresh LuaJIT state, wrk's interpreter, loaded through ctypes."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("luajit-5.1") or "libluajit-5.1.so.2"
    try:
        lua = ctypes.CDLL(name)
    except OSError:
        pytest.skip("no libluajit-5.1 here (wrk's Lua)")
    lua.luaL_newstate.restype = ctypes.c_void_p
    lua.lua_tolstring.restype = ctypes.c_char_p
    lua.lua_tolstring.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    for function in (lua.luaL_openlibs, lua.lua_close):
        function.argtypes = [ctypes.c_void_p]
    lua.luaL_loadstring.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lua.lua_pcall.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    state = lua.luaL_newstate()
    try:
        lua.luaL_openlibs(state)
        failed = lua.luaL_loadstring(state, chunk.encode()) or lua.lua_pcall(state, 0, 1, 0)
        text = lua.lua_tolstring(state, -1, None).decode()
        assert not failed, text
        return text
    finally:
        lua.lua_close(state)


def test_the_lua_script_sends_the_bodies_in_order_and_reports_a_parsable_line(tmp_path):
    bodies = [b'{"i":%d}' % i for i in range(3)]
    body_file = write_bodies(bodies, tmp_path)
    output = run_lua(f"""
        wrk = {{format = function(method, path, headers, body)
            return method .. " " .. headers["Content-Type"] .. " " .. body end}}
        dofile({str(wrk_load.SCRIPT)!r})
        setup({{get = function(self, name) return _G[name] end}})  -- one thread, this state
        init({{{str(body_file)!r}, "1"}})
        local sent = {{request()}}  -- wrk's check call, before the run
        for i = 1, 4 do sent[#sent + 1] = request() end
        response(200, {{}}, "{{}}"); response(422, {{}}, "{{}}"); response(204, {{}}, "")
        local lines = {{}}
        io.write = function(text) lines[#lines + 1] = text end
        done({{duration = 2e6, requests = 3, errors = {{connect = 0, read = 1, write = 0, timeout = 1}}}},
             {{percentile = function(self, p) return p * 100 end}}, nil)
        return table.concat(sent, "\\n") .. "\\n" .. table.concat(lines)
    """)
    lines = output.splitlines()
    assert lines[:5] == [f"POST application/json {body.decode()}" for body in [bodies[i] for i in (1, 1, 2, 0, 1)]]
    result = parse_result(output, concurrency=1)
    assert (result.requests, result.non_2xx, result.socket_errors, result.next_body) == (3, 1, 2, 2)
    assert (result.seconds, result.rps, result.p50_ms, result.p99_ms) == (2.0, 1.5, 5.0, 9.9)
