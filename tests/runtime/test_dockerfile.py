"""Unit tests of runtime.build.dockerfile (no engine) and of the .dockerignore matcher."""

import pytest

from runtime.build.context import IgnoreMatcher
from runtime.build.dockerfile import DockerfileError, expand, expand_words, parse


def only(text):
    stages = parse(text).stages
    return stages[-1].instructions


def test_line_continuations_skip_comments_and_empty_lines():
    ins = only("FROM a\nRUN echo one \\\n  # a comment\n\n  && echo two\nCMD x\n")
    assert ins[0].args == ["echo one   && echo two"]
    assert (ins[0].line, ins[0].end_line) == (2, 5)
    assert ins[1].line == 6


def test_escape_directive_backtick():
    df = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  && echo ok\n")
    assert df.escape == "`" and df.directives == {"escape": "`"}
    assert df.stages[0].instructions[0].args == ["dir c:\\   && echo ok"]


def test_directives_only_at_the_top():
    df = parse("FROM a\n# escape=`\nRUN x \\\n y\n")
    assert df.escape == "\\"
    assert df.stages[0].instructions[0].args == ["x  y"]
    assert parse("# syntax=docker/dockerfile:1\nFROM a\n").directives == {"syntax": "docker/dockerfile:1"}
    with pytest.raises(DockerfileError, match="Dockerfile:2: only one escape"):
        parse("# escape=`\n# escape=\\\nFROM a\n")


def test_heredocs():
    ins = only("FROM a\nRUN <<EOF\necho hi\n  echo $X\nEOF\nCOPY <<-\"END\" /f\n\tliteral $X\n\tEND\nENV A=1\n")
    run, copy, env = ins
    assert run.heredocs[0].name == "EOF" and run.heredocs[0].content == "echo hi\n  echo $X\n"
    assert run.heredocs[0].expand
    assert copy.heredocs[0].content == "literal $X\n" and not copy.heredocs[0].expand
    assert copy.args == ["<<-\"END\"", "/f"]
    assert env.line == 9
    with pytest.raises(DockerfileError, match="Dockerfile:2: unterminated heredoc EOF"):
        parse("FROM a\nRUN <<EOF\necho\n")


def test_json_and_shell_forms():
    cmd, entry, run, copy, shell = only(
        'FROM a\nCMD ["echo", "a b"]\nENTRYPOINT echo hi\nRUN ["broken"\nCOPY ["a b", "/c/"]\nSHELL ["/bin/bash", "-c"]\n')
    assert cmd.json and cmd.args == ["echo", "a b"]
    assert not entry.json and entry.args == ["echo hi"]
    assert not run.json and run.args == ['["broken"']
    assert copy.json and copy.args == ["a b", "/c/"]
    assert shell.args == ["/bin/bash", "-c"]
    with pytest.raises(DockerfileError, match="Dockerfile:2: SHELL requires the arguments to be in JSON form"):
        parse("FROM a\nSHELL /bin/bash -c\n")


def test_env_label_arg_forms_and_flags():
    env, legacy, label, arg, copy = only(
        'FROM a\nENV A="x y" B=${A}\nENV D e f\nLABEL "k 1"=v\nARG N=1 M\nCOPY --from=b --chown=1:2 x y\n')
    assert env.args == ["A", '"x y"', "B", "${A}"]
    assert legacy.args == ["D", "e f"]
    assert label.args == ['"k 1"', "v"]
    assert arg.args == ["N", "1", "M", None]
    assert copy.flags == {"from": ["b"], "chown": ["1:2"]} and copy.args == ["x", "y"]
    with pytest.raises(DockerfileError, match="Dockerfile:2: unknown flag: --bogus"):
        parse("FROM a\nCOPY --bogus=1 x y\n")


def test_stages_meta_args_and_errors():
    df = parse("ARG V=1\nFROM busybox:$V AS Build\nRUN x\nFROM build\n")
    assert [a.args for a in df.meta_args] == [["V", "1"]]
    assert [(s.name, s.base) for s in df.stages] == [("build", "busybox:$V"), ("", "build")]
    with pytest.raises(DockerfileError, match="^Dockerfile:3: unknown instruction: RUNN$"):
        parse("FROM a\n\nRUNN x\n")
    with pytest.raises(DockerfileError, match="Dockerfile:1: no build stage"):
        parse("RUN x\n")
    with pytest.raises(DockerfileError, match="Dockerfile:2: ENV must have two arguments"):
        parse("FROM a\nENV A\n")
    with pytest.raises(DockerfileError, match="isn't allowed as an ONBUILD trigger"):
        parse("FROM a\nONBUILD FROM b\n")


def test_substitution():
    env = {"A": "x y", "E": ""}
    assert expand("$A", env) == "x y"
    assert expand("${A}-z", env) == "x y-z"
    assert expand("${MISSING:-def}", env) == "def"
    assert expand("${E:-def}", env) == "def" and expand("${E-def}", env) == ""
    assert expand("${A:+alt}", env) == "alt" and expand("${MISSING:+alt}", env) == ""
    assert expand("'$A'", env) == "$A"
    assert expand('"$A \\$A"', env) == "x y $A"
    assert expand("a\\ b", env) == "a b"
    assert expand("`$A", env, "`") == "$A"
    assert expand_words('$A "q w" \'$A\' "$A"', env) == ["x", "y", "q w", "$A", "x y"]
    with pytest.raises(DockerfileError, match="Dockerfile:4: MISSING: needed"):
        expand("${MISSING:?needed}", env, line=4)


def test_dockerignore_patterns():
    m = IgnoreMatcher(["# c", "*.log", "!keep.log", "docs/**", "**/tmp", "/build", "a/*/c", ""])
    assert m.excluded("x.log") and not m.excluded("keep.log")
    assert not m.excluded("sub/x.log")  # "*" does not cross "/".
    assert m.excluded("docs/a/b.md") and not m.excluded("docs")  # As patternmatcher: "docs/**" is below docs.
    assert m.excluded("tmp") and m.excluded("x/y/tmp/file")  # Parents match too.
    assert m.excluded("build/out.o")
    assert m.excluded("a/b/c") and not m.excluded("a/b/d/c")
    assert not m.excluded("src/main.py")
